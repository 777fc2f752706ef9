//! `rebalanser member run --exec CMD` and its hidden per-child guard process.
//! (Being written: see the issue 4 work.)

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct MemberArgs {}

#[derive(clap::Args, Debug)]
pub struct GuardArgs {}

pub fn member(_a: MemberArgs) -> ExitCode {
    eprintln!("rebalanser: member is not built yet");
    ExitCode::FAILURE
}

pub fn guard(_a: GuardArgs) -> ExitCode {
    ExitCode::FAILURE
}

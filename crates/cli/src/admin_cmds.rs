//! `rebalanser resource add|remove|list`, `rebalanser status`, `rebalanser watch`.
//! (Being written: see the issue 4 work.)

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ResourceArgs {}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {}

#[derive(clap::Args, Debug)]
pub struct WatchArgs {}

pub fn resource(_a: ResourceArgs) -> ExitCode {
    eprintln!("rebalanser: resource is not built yet");
    ExitCode::FAILURE
}

pub fn status(_a: StatusArgs) -> ExitCode {
    eprintln!("rebalanser: status is not built yet");
    ExitCode::FAILURE
}

pub fn watch(_a: WatchArgs) -> ExitCode {
    eprintln!("rebalanser: watch is not built yet");
    ExitCode::FAILURE
}

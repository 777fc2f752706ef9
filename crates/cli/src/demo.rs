//! `rebalanser demo`: the zero-setup demo on the embedded store.
//! (Being written: see the issue 4 work.)

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

pub fn run(_a: DemoArgs) -> ExitCode {
    eprintln!("rebalanser: demo is not built yet");
    ExitCode::FAILURE
}

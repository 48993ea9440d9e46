//! The `segment-agent` binary: parses the command line, runs the command and
//! turns its outcome into an exit code (see `cli::ExitCode`).

fn main() -> std::process::ExitCode {
    segment::cli::main()
}

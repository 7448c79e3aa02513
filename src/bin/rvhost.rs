//! The `rvhost` command line.

fn main() {
    eprintln!("rvhost: no subcommand is implemented yet");
    std::process::exit(2);
}

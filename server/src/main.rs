//! `support-server`: placeholder until the service lands.

fn main() {
    eprintln!("support-server: not available in this build yet");
    std::process::exit(2);
}

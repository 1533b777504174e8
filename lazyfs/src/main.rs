fn main() {
    eprintln!("shoal-lazyfs: not implemented yet");
    std::process::exit(2);
}

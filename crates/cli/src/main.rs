//! The `gen` executable: everything is in the gen-cli library.

fn main() {
    gen_cli::main()
}

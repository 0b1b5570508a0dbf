//! The `gen` executable: everything is in the gen-cli library.

// glibc returns large tensor buffers to the kernel on free and faults them back in on the next
// allocation (page faults and TLB-shootdown IPIs were half of a GroupNorm backward); mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    gen_cli::main()
}

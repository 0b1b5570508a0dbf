//! The `gen` executable: everything is in the gen-cli library.

// glibc returns large tensor buffers to the kernel on free and faults them back in on the next
// allocation; mimalloc keeps them (the measured cost is in docs/DESIGN.md, "Build flags").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    // part of the mimalloc library linked above
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` (mimalloc v2 `mi_option_e`): -1 never returns freed pages to the OS.
const MI_OPTION_PURGE_DELAY: i32 = 15;

fn main() {
    // SAFETY: sets a global allocator option before any other thread exists
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Candle's elementwise ops run on the calling thread: our kernels and batch shards already spread the
    // work over rayon's threads, and Candle's own spinning pool beside them cost more than it gave
    // (docs/DESIGN.md, "Threads"). Set before any thread exists; a user's own setting wins.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Candle sizes every matmul's thread count from RAYON_NUM_THREADS, and when it is unset re-reads the
    // CPU topology from /proc on each call (a third of a small-model sampling step in one profile).
    // Pinning it to rayon's own default changes no thread count and makes the lookup free.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    gen_cli::main()
}

//! gen-cli: the `gen` command line. Each subcommand parses, calls a library function and prints; errors
//! are one line (`error: …`) and a non-zero exit. The binary (`src/main.rs`) only calls [`main`].

pub mod bench;
pub mod data_cmds;
pub mod tokenizer_cmds;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gen", version, about = "VQGAN-LC tokenizer and generators on Candle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode and decode images with a tokenizer; writes `<name>.png` reconstructions.
    Reconstruct(tokenizer_cmds::ReconstructArgs),
    /// Turn images into token ids (safetensors `tokens U32 [N, h·w]`).
    Encode(tokenizer_cmds::EncodeArgs),
    /// Turn token ids back into images.
    Decode(tokenizer_cmds::DecodeArgs),
    /// Convert an official VQGAN-LC `.pth` (+ codebook) into a model folder.
    Convert(tokenizer_cmds::ConvertArgs),
    /// Time our kernels and models side by side with a PyTorch baseline.
    Bench(bench::BenchArgs),
    /// Write Fashion-MNIST images (the demo domain) as PNG files.
    ExportFmnist(data_cmds::ExportFmnistArgs),
}

/// Parses the process arguments and runs the subcommand; exits non-zero with a one-line error.
pub fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Reconstruct(a) => tokenizer_cmds::reconstruct(a),
        Command::Encode(a) => tokenizer_cmds::encode(a),
        Command::Decode(a) => tokenizer_cmds::decode(a),
        Command::Convert(a) => tokenizer_cmds::convert(a),
        Command::Bench(a) => bench::bench(a),
        Command::ExportFmnist(a) => data_cmds::export_fmnist(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error chain on one line: the first line of each cause (Candle appends a backtrace to its
/// errors' text), repeated causes dropped.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let first = cause.to_string().lines().next().unwrap_or_default().trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

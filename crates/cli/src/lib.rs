//! gen-cli: the `gen` command line. Each subcommand (one file in `commands/`) parses, calls a library
//! function and prints; errors are one line (`error: …`) and a non-zero exit. The binary
//! (`src/main.rs`) only calls [`main`].

pub mod args;
pub mod commands;

use clap::{Parser, Subcommand};
use commands::*;

#[derive(Parser)]
#[command(name = "gen", version, about = "VQGAN-LC tokenizer and generators on Candle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Draw images of a class: the GPT prior samples tokens, the paired tokenizer decodes them.
    Sample(Box<sample::SampleArgs>),
    /// Encode and decode images with a tokenizer; writes `<name>.png` reconstructions.
    Reconstruct(reconstruct::ReconstructArgs),
    /// Turn images into token ids (safetensors `tokens U32 [N, h·w]`).
    Encode(encode::EncodeArgs),
    /// Images → token (or latent) shards for training the generators; resumable, `--part i/n`.
    Tokenize(tokenize::TokenizeArgs),
    /// Shard folders: `merge` joins the part manifests of a `--part i/n` tokenize job.
    Shards(tokenize::ShardsArgs),
    /// Turn token ids back into images.
    Decode(decode::DecodeArgs),
    /// Convert an official VQGAN-LC `.pth` (+ codebook) into a model folder.
    Convert(convert::ConvertArgs),
    /// Time our kernels and models side by side with a PyTorch baseline.
    Bench(bench::BenchArgs),
    /// Write Fashion-MNIST images (the demo domain) as PNG files.
    ExportFmnist(export_fmnist::ExportFmnistArgs),
    /// Fréchet Inception Distance between two image folders or statistics files (pytorch-fid exact).
    Fid(fid::FidArgs),
    /// A tokenizer's reconstruction quality: rFID, PSNR, SSIM, LPIPS, codebook utilisation.
    Rfid(rfid::RfidArgs),
    /// Train the Fashion-MNIST classifier (class judge and FID features of the demo domain).
    TrainClassifier(train_classifier::TrainClassifierArgs),
    /// Per-class accuracy of labelled images under the Fashion-MNIST classifier.
    EvalClasses(eval_classes::EvalClassesArgs),
    /// A frozen codebook: k-means centres of an encoder's patch features, per class or global.
    InitCodebook(init_codebook::InitCodebookArgs),
    /// Train a tokenizer (VQGAN-LC, VQGAN, EMA, FC or SimVQ) with the official recipe.
    TrainTokenizer(train_tokenizer::TrainTokenizerArgs),
    /// Train the GPT prior on token shards (official GPT-LC recipe; class dropout for CFG).
    TrainPrior(train_prior::TrainPriorArgs),
    /// Train a latent generator (DiT, SiT or LDM) on latent shards, with an EMA of its weights.
    Train(train::TrainArgs),
    /// Codebook utilisation of a tokenizer on a set of images (active codes, %, perplexity, histogram).
    Utilization(utilization::UtilizationArgs),
    /// The paper's utilisation experiment on the demo domain: five quantizers × codebook sizes, one table.
    CodebookExperiment(codebook_experiment::CodebookExperimentArgs),
}

/// Parses the process arguments and runs the subcommand; exits non-zero with a one-line error.
pub fn main() {
    let cli = Cli::parse();
    // The command runs on a worker of rayon's pool, not beside it: each parallel op it starts then begins
    // on that worker with the others stealing, instead of being handed to a sleeping pool and waited for
    // (docs/DESIGN.md, "Threads": LDM sampling 8.3 → 4.0 s, the demo GPT 1.5 → 1.15 s).
    args::build_pool(cli.command.threads());
    let result = rayon::scope(|_| run(cli.command));
    if let Err(e) = result {
        eprintln!("error: {}", gen_runtime::one_line(e.as_ref()));
        std::process::exit(1);
    }
}

impl Command {
    /// `--threads`, where the subcommand takes it.
    fn threads(&self) -> Option<usize> {
        match self {
            Command::Sample(a) => a.run.threads,
            Command::Reconstruct(a) => a.model.run.threads,
            Command::Encode(a) => a.model.run.threads,
            Command::Tokenize(a) => a.model.run.threads,
            Command::Decode(a) => a.model.run.threads,
            Command::Bench(a) => Some(a.threads),
            Command::Fid(a) => a.run.threads,
            Command::Rfid(a) => a.model.run.threads,
            Command::TrainClassifier(a) => a.threads,
            Command::EvalClasses(a) => a.run.threads,
            Command::InitCodebook(a) => a.run.threads,
            Command::TrainTokenizer(a) => a.run.threads,
            Command::TrainPrior(a) => a.run.threads,
            Command::Train(a) => a.run.threads,
            Command::Utilization(a) => a.model.run.threads,
            Command::CodebookExperiment(a) => a.run.threads,
            Command::Shards(_) | Command::Convert(_) | Command::ExportFmnist(_) => None,
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Sample(a) => sample::run(*a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Encode(a) => encode::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Shards(a) => tokenize::run_shards(a),
        Command::Decode(a) => decode::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Bench(a) => bench::run(a),
        Command::ExportFmnist(a) => export_fmnist::run(a),
        Command::Fid(a) => fid::run(a),
        Command::Rfid(a) => rfid::run(a),
        Command::TrainClassifier(a) => train_classifier::run(a),
        Command::EvalClasses(a) => eval_classes::run(a),
        Command::InitCodebook(a) => init_codebook::run(a),
        Command::TrainTokenizer(a) => train_tokenizer::run(a),
        Command::TrainPrior(a) => train_prior::run(a),
        Command::Train(a) => train::run(a),
        Command::Utilization(a) => utilization::run(a),
        Command::CodebookExperiment(a) => codebook_experiment::run(a),
    }
}

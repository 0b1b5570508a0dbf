//! gen-train: the training module every trainer (classifier, tokenizer, GPT, DiT/SiT/LDM) sits on. A
//! trainer is a loss function plus a config on top of it; this crate owns everything else a run needs:
//! the run folder with its `config.toml`, `log.jsonl` and checkpoints (`run`), our checkpointable AdamW
//! (`adamw`), warmup + cosine learning rates (`schedule`), the named parameters a checkpoint saves
//! (`vars`), and the loop that steps, logs, checkpoints, stops on a NaN loss and resumes bit-exactly
//! (`trainer`).

pub mod adamw;
pub mod ema;
pub mod optim;
pub mod order;
pub mod plots;
pub mod run;
pub mod schedule;
pub mod trainer;
pub mod vars;

pub use adamw::{AdamW, AdamWConfig};
pub use ema::{EmaConfig, WeightEma};
pub use optim::OptimConfig;
pub use run::{Checkpoint, OpenMode, Progress, RunDir};
pub use schedule::LrSchedule;
pub use trainer::{LoopConfig, StepCtx, StepOutput, Trainer};
pub use vars::{load_vars, named_vars, var_tensors};

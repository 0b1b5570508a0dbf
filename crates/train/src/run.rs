//! The run folder of a training run:
//! ```text
//! <run>/config.toml                    the resolved config, as trained
//! <run>/log.jsonl                      one JSON object per log step: {"step": N, ...}
//! <run>/checkpoints/step-XXXXXXXX/     model.safetensors, optimizer.safetensors, state.json
//! <run>/checkpoints/latest             the name of the newest checkpoint folder
//! ```
//! A checkpoint folder is filled under a temp name (`.step-XXXXXXXX.tmp-<pid>`) and renamed into place,
//! and only then does `latest` (written atomically) name it: a folder named `step-*` is complete, and a
//! crash at any point leaves `latest` on the previous good one. `--resume` follows `latest`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gen_runtime::io::{load_safetensors, save_safetensors, write_atomic};
use gen_runtime::{Error, Result, Rng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const CONFIG: &str = "config.toml";
pub const LOG: &str = "log.jsonl";
const CHECKPOINTS: &str = "checkpoints";
const LATEST: &str = "latest";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const STATE_FORMAT: &str = "gen-train-state";

/// Where a run stands: optimizer steps taken, epochs finished, and the trainer's position in the
/// current epoch (its meaning, e.g. samples consumed, is the trainer's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub epoch: u64,
    pub cursor: u64,
}

/// `state.json` of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    format_version: u32,
    step: u64,
    epoch: u64,
    cursor: u64,
    rng: [u64; 4],
    /// sha256 of `config.toml`'s text: a resume with another config is refused.
    config_hash: String,
}

/// A checkpoint read back: everything `--resume` restores.
#[derive(Debug)]
pub struct Checkpoint {
    /// The folder it was read from (named in errors about its tensors).
    pub dir: PathBuf,
    pub progress: Progress,
    pub rng: Rng,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

impl Checkpoint {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL)
    }
    pub fn optimizer_path(&self) -> PathBuf {
        self.dir.join(OPTIMIZER)
    }
}

/// How a trainer opens its run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// A new run: refuses a folder that holds checkpoints.
    New,
    /// Continue from the newest checkpoint ([`RunDir::resume`]).
    Resume,
    /// Load the newest checkpoint and write nothing ([`RunDir::inspect`]), e.g. to export it.
    Inspect,
}

#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    config_hash: String,
    /// Opened on the first log line, in append mode.
    log: Option<File>,
}

impl RunDir {
    /// Starts a new run in `root` with `config` (any struct that serialises to a TOML table): writes
    /// `config.toml` and an empty `log.jsonl`. Refuses a folder that already holds a checkpoint, so a
    /// run is never overwritten by mistake.
    pub fn create<C: Serialize>(root: impl Into<PathBuf>, config: &C) -> Result<Self> {
        let root = root.into();
        let (text, config_hash) = config_text(config)?;
        let run = RunDir { root, config_hash, log: None };
        if let Some(latest) = run.latest()? {
            return Err(Error::format(
                &run.root,
                format!(
                    "already holds a checkpoint ({}); resume it (--resume) or choose another folder",
                    name_of(&latest)
                ),
            ));
        }
        run.remove_stale_temps()?;
        write_atomic(&run.root.join(CONFIG), text.as_bytes())?;
        write_atomic(&run.root.join(LOG), b"")?;
        Ok(run)
    }

    /// Opens `root` without writing anything in it (a training process may be writing it): its newest
    /// checkpoint loaded onto `dev`, or `None`. Refuses a config whose hash differs from the checkpoint's.
    pub fn inspect<C: Serialize>(
        root: impl Into<PathBuf>,
        config: &C,
        dev: &Device,
    ) -> Result<(Self, Option<Checkpoint>)> {
        let (_, config_hash) = config_text(config)?;
        let run = RunDir { root: root.into(), config_hash, log: None };
        let ckpt = run.latest()?.map(|dir| run.load_checkpoint(&dir, dev)).transpose()?;
        Ok((run, ckpt))
    }

    /// Opens `root` to continue it with `config`: returns the run and its newest checkpoint loaded onto
    /// `dev`, or `None` when it has none yet (the run then starts over, as `create` would). Refuses a
    /// config whose hash differs from the checkpoint's. Log lines past the checkpoint's step (written
    /// after it, before the run stopped) are dropped, so the resumed log reads as an unbroken one.
    pub fn resume<C: Serialize>(
        root: impl Into<PathBuf>,
        config: &C,
        dev: &Device,
    ) -> Result<(Self, Option<Checkpoint>)> {
        let root = root.into();
        let (text, config_hash) = config_text(config)?;
        let run = RunDir { root, config_hash, log: None };
        run.remove_stale_temps()?;
        let Some(dir) = run.latest()? else {
            write_atomic(&run.root.join(CONFIG), text.as_bytes())?;
            write_atomic(&run.root.join(LOG), b"")?;
            return Ok((run, None));
        };
        let ckpt = run.load_checkpoint(&dir, dev)?;
        write_atomic(&run.root.join(CONFIG), text.as_bytes())?;
        run.truncate_log(ckpt.progress.step)?;
        Ok((run, Some(ckpt)))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// sha256 (hex) of `config.toml`'s text.
    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    /// Appends `{"step": step, ...fields}` as one line and flushes it. `fields` must serialise to a JSON
    /// object without a `step` key.
    pub fn log(&mut self, step: u64, fields: &impl Serialize) -> Result<()> {
        let path = self.root.join(LOG);
        let value = serde_json::to_value(fields).map_err(|e| Error::format(&path, format!("log fields: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::format(&path, "log fields must be a JSON object"));
        };
        if map.contains_key("step") {
            return Err(Error::format(&path, "log fields must not hold 'step' (it is written first)"));
        }
        let mut line = format!("{{\"step\":{step}");
        for (key, value) in &map {
            line.push(',');
            line.push_str(&serde_json::Value::String(key.clone()).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push_str("}\n");
        if self.log.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
            self.log = Some(file);
        }
        let file = self.log.as_mut().expect("opened above");
        file.write_all(line.as_bytes()).and_then(|()| file.flush()).map_err(|e| Error::io(&path, e))
    }

    /// Writes `checkpoints/step-XXXXXXXX/` for `progress.step` and points `latest` at it; returns the
    /// folder. `model` and `optimizer` are named tensors (see `vars::var_tensors`, `AdamW::state_tensors`).
    pub fn save_checkpoint(
        &self,
        progress: &Progress,
        rng: &Rng,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
    ) -> Result<PathBuf> {
        let dir = self.root.join(CHECKPOINTS);
        let name = format!("step-{:08}", progress.step);
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_safetensors(&tmp.join(MODEL), model, None)?;
        save_safetensors(&tmp.join(OPTIMIZER), optimizer, None)?;
        let state = StateFile {
            format: STATE_FORMAT.into(),
            format_version: 1,
            step: progress.step,
            epoch: progress.epoch,
            cursor: progress.cursor,
            rng: rng.state(),
            config_hash: self.config_hash.clone(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| Error::format(tmp.join(STATE), e.to_string()))?;
        write_atomic(&tmp.join(STATE), json.as_bytes())?;
        sync_dir(&tmp)?;

        let done = dir.join(&name);
        if done.exists() {
            // The same step again (a resume from an older `latest`): swap, so a complete folder is always there.
            let old = dir.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(&done, &old).map_err(|e| Error::io(&done, e))?;
            std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
        }
        sync_dir(&dir)?;
        write_atomic(&dir.join(LATEST), format!("{name}\n").as_bytes())?;
        Ok(done)
    }

    /// The newest complete checkpoint folder: the one `latest` names, or, without `latest` (a crash
    /// between the rename and its write), the highest `step-XXXXXXXX` folder. Temp folders never count.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let dir = self.root.join(CHECKPOINTS);
        let latest = dir.join(LATEST);
        match std::fs::read_to_string(&latest) {
            Ok(text) => {
                let name = text.trim();
                if parse_step_name(name).is_none() {
                    return Err(Error::format(&latest, format!("names '{name}', expected a folder step-XXXXXXXX")));
                }
                let folder = dir.join(name);
                if !folder.is_dir() {
                    return Err(Error::format(&latest, format!("names {name}, which does not exist")));
                }
                Ok(Some(folder))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(&dir, e)),
                };
                let mut best: Option<(u64, PathBuf)> = None;
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io(&dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(step) = parse_step_name(&name).filter(|_| entry.path().is_dir()) {
                        if best.as_ref().is_none_or(|(b, _)| step > *b) {
                            best = Some((step, entry.path()));
                        }
                    }
                }
                Ok(best.map(|(_, p)| p))
            }
            Err(e) => Err(Error::io(&latest, e)),
        }
    }

    /// Reads a checkpoint folder onto `dev`, refusing one written under another config.
    pub fn load_checkpoint(&self, dir: &Path, dev: &Device) -> Result<Checkpoint> {
        let state_path = dir.join(STATE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: StateFile = serde_json::from_str(&text)
            .map_err(|e| Error::format(&state_path, format!("not a {STATE_FORMAT} file: {e}")))?;
        if state.format != STATE_FORMAT || state.format_version != 1 {
            return Err(Error::format(
                &state_path,
                format!("format {} v{}, expected {STATE_FORMAT} v1", state.format, state.format_version),
            ));
        }
        if state.config_hash != self.config_hash {
            return Err(Error::format(
                &state_path,
                format!(
                    "config hash {} differs from the checkpoint's {}: resume with the config the run was started with ({})",
                    self.config_hash,
                    state.config_hash,
                    self.root.join(CONFIG).display()
                ),
            ));
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            progress: Progress { step: state.step, epoch: state.epoch, cursor: state.cursor },
            rng: Rng::from_state(state.rng),
            model: load_safetensors(&dir.join(MODEL), dev)?,
            optimizer: load_safetensors(&dir.join(OPTIMIZER), dev)?,
        })
    }

    /// Keeps the log lines up to `step`; a torn last line (a crash mid-write) goes too.
    fn truncate_log(&self, step: u64) -> Result<()> {
        let path = self.root.join(LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let kept: String = text
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .filter(|line| {
                let parsed = serde_json::from_str::<serde_json::Value>(line).ok();
                parsed.and_then(|v| v.get("step").and_then(|s| s.as_u64())).is_some_and(|s| s <= step)
            })
            .collect();
        if kept != text {
            write_atomic(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    /// Temp checkpoint folders left by a run that died while writing one: never complete, never named.
    fn remove_stale_temps(&self) -> Result<()> {
        let dir = self.root.join(CHECKPOINTS);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".step-") && (name.contains(".tmp-") || name.contains(".old-")) {
                std::fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(())
    }
}

/// The TOML text of a config and its sha256.
fn config_text<C: Serialize>(config: &C) -> Result<(String, String)> {
    let text = toml::to_string(config).map_err(|e| {
        Error::Invalid(format!("config cannot be written as TOML: {}", e.to_string().replace('\n', " ")))
    })?;
    let hash = format!("{:x}", Sha256::digest(text.as_bytes()));
    Ok((text, hash))
}

/// `step-00001234` → 1234.
fn parse_step_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Makes renames inside `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Cfg {
        lr: f64,
        name: String,
    }

    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gen-train-run-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn step_names_parse_only_when_complete() {
        assert_eq!(parse_step_name("step-00001234"), Some(1234));
        assert_eq!(parse_step_name("step-1234"), None);
        assert_eq!(parse_step_name(".step-00001234.tmp-7"), None);
        assert_eq!(parse_step_name("step-0000123x"), None);
    }

    #[test]
    fn log_lines_start_with_the_step_and_resume_drops_lines_past_the_checkpoint() {
        let root = temp_root("log");
        let cfg = Cfg { lr: 0.1, name: "a".into() };
        let mut run = RunDir::create(&root, &cfg).unwrap();
        for step in 1..=3 {
            run.log(step, &serde_json::json!({"loss": 0.5})).unwrap();
        }
        run.save_checkpoint(&Progress { step: 2, ..Default::default() }, &Rng::new(0), &[], &[]).unwrap();
        let text = std::fs::read_to_string(root.join(LOG)).unwrap();
        assert_eq!(text.lines().next().unwrap(), r#"{"step":1,"loss":0.5}"#);
        std::fs::OpenOptions::new().append(true).open(root.join(LOG)).unwrap().write_all(b"{\"step\":4,\"lo").unwrap();
        let (_, ckpt) = RunDir::resume(&root, &cfg, &Device::Cpu).unwrap();
        assert_eq!(ckpt.unwrap().progress.step, 2);
        assert_eq!(std::fs::read_to_string(root.join(LOG)).unwrap().lines().count(), 2);
        assert!(run.log(5, &serde_json::json!({"step": 1})).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn create_refuses_a_folder_with_checkpoints_and_resume_refuses_another_config() {
        let root = temp_root("refuse");
        let cfg = Cfg { lr: 0.1, name: "a".into() };
        let run = RunDir::create(&root, &cfg).unwrap();
        run.save_checkpoint(&Progress { step: 7, ..Default::default() }, &Rng::new(0), &[], &[]).unwrap();
        let e = RunDir::create(&root, &cfg).unwrap_err().to_string();
        assert!(e.contains("step-00000007") && e.contains("--resume"), "{e}");

        let other = Cfg { lr: 0.2, name: "a".into() };
        let e = RunDir::resume(&root, &other, &Device::Cpu).unwrap_err().to_string();
        let (ours, theirs) = (config_text(&other).unwrap().1, run.config_hash().to_string());
        assert!(e.contains(&ours) && e.contains(&theirs) && e.contains("state.json"), "{e}");
        assert!(!e.contains('\n'));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_latest_falls_back_to_the_highest_complete_folder() {
        let root = temp_root("nolatest");
        let cfg = Cfg { lr: 0.1, name: "a".into() };
        let run = RunDir::create(&root, &cfg).unwrap();
        for step in [3, 12, 5] {
            run.save_checkpoint(&Progress { step, ..Default::default() }, &Rng::new(0), &[], &[]).unwrap();
        }
        assert_eq!(name_of(&run.latest().unwrap().unwrap()), "step-00000005"); // latest = last written
        std::fs::remove_file(root.join(CHECKPOINTS).join(LATEST)).unwrap();
        assert_eq!(name_of(&run.latest().unwrap().unwrap()), "step-00000012");
        std::fs::write(root.join(CHECKPOINTS).join(LATEST), "../../etc").unwrap();
        assert!(run.latest().unwrap_err().to_string().contains("expected a folder step-XXXXXXXX"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn inspecting_a_run_loads_its_checkpoint_and_writes_nothing() {
        let root = temp_root("inspect");
        let cfg = Cfg { lr: 0.1, name: "a".into() };
        let mut run = RunDir::create(&root, &cfg).unwrap();
        assert!(RunDir::inspect(&root, &cfg, &Device::Cpu).unwrap().1.is_none());
        for step in 1..=3 {
            run.log(step, &serde_json::json!({"loss": 0.5})).unwrap();
        }
        run.save_checkpoint(&Progress { step: 2, ..Default::default() }, &Rng::new(0), &[], &[]).unwrap();
        // the training process is writing its next checkpoint, and has logged past the last one
        let in_flight = root.join(CHECKPOINTS).join(".step-00000004.tmp-1");
        std::fs::create_dir_all(&in_flight).unwrap();
        let log = std::fs::read(root.join(LOG)).unwrap();
        let (_, ckpt) = RunDir::inspect(&root, &cfg, &Device::Cpu).unwrap();
        assert_eq!(ckpt.unwrap().progress.step, 2);
        assert_eq!(std::fs::read(root.join(LOG)).unwrap(), log);
        assert!(in_flight.exists());
        let other = Cfg { lr: 0.2, name: "a".into() };
        assert!(RunDir::inspect(&root, &other, &Device::Cpu).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_checkpoint_write_leaves_the_previous_one_intact() {
        let root = temp_root("failwrite");
        let cfg = Cfg { lr: 0.1, name: "a".into() };
        let run = RunDir::create(&root, &cfg).unwrap();
        let t = vec![("w".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())];
        run.save_checkpoint(&Progress { step: 3, ..Default::default() }, &Rng::new(0), &t, &[]).unwrap();
        // the next write cannot make its temp folder (as on a full disk): a file sits where it would go
        let blocker = root.join(CHECKPOINTS).join(format!(".step-00000006.tmp-{}", std::process::id()));
        std::fs::write(&blocker, b"").unwrap();
        let e = run.save_checkpoint(&Progress { step: 6, ..Default::default() }, &Rng::new(0), &t, &[]).unwrap_err();
        assert!(e.to_string().contains(".step-00000006.tmp"), "{e}");
        let latest = run.latest().unwrap().unwrap();
        assert_eq!(name_of(&latest), "step-00000003");
        let ckpt = run.load_checkpoint(&latest, &Device::Cpu).unwrap();
        assert_eq!(ckpt.progress.step, 3);
        assert_eq!(ckpt.model["w"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_config_that_is_not_a_table_is_a_one_line_error() {
        let e = RunDir::create(temp_root("nottable"), &3u32).unwrap_err().to_string();
        assert!(e.starts_with("config cannot be written as TOML") && !e.contains('\n'), "{e}");
    }
}

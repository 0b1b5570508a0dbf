use super::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gen-shards-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn header(kind: ShardKind) -> Manifest {
    Manifest {
        format: kind.format().into(),
        format_version: FORMAT_VERSION,
        grid: [2, 3],
        vocab: (kind == ShardKind::Tokens).then_some(50),
        channels: (kind == ShardKind::Latents).then_some(4),
        tokenizer_sha256: "ab".repeat(32),
        num_classes: 3,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        shards: vec![],
    }
}

fn token_shard(n: usize, offset: u32) -> Shard {
    Shard {
        payload: Payload::Tokens((0..n as u32 * 6).map(|i| (i + offset) % 50).collect()),
        labels: (0..n as u32).map(|i| i % 3).collect(),
    }
}

/// Writes two token shards and the manifest.
fn write_tokens(dir: &Path) -> Manifest {
    let mut m = header(ShardKind::Tokens);
    for (i, (n, off)) in [(4, 0), (3, 7)].into_iter().enumerate() {
        m.shards.push(token_shard(n, off).write(dir, &Manifest::shard_file(i), &m).unwrap());
    }
    m.write(dir, MANIFEST).unwrap();
    m
}

#[test]
fn token_shards_round_trip_through_the_manifest() {
    let dir = tmp("round");
    let written = write_tokens(&dir);
    let m = Manifest::open(&dir).unwrap();
    assert_eq!(m, written);
    assert_eq!((m.len(), m.seq_len(), m.kind()), (7, 6, ShardKind::Tokens));
    let s = m.read_shard(&dir, 1).unwrap();
    let Payload::Tokens(ids) = &s.payload else { panic!("tokens") };
    let Payload::Tokens(want) = token_shard(3, 7).payload else { panic!() };
    assert_eq!(ids, &want);
    assert_eq!(s.labels, vec![0, 1, 2]);
    let meta = io::safetensors_metadata(&dir.join("shard-00000.safetensors")).unwrap();
    assert_eq!(meta["format"], "gen-tokens");
    assert_eq!(meta["grid"], "2,3");
    assert_eq!(meta["payload_sha256"], m.shards[0].payload_sha256);
    m.check_tokenizer(&dir, &"ab".repeat(32)).unwrap();
}

#[test]
fn latent_shards_round_trip_in_f16_and_f32() {
    for dtype in [DType::F32, DType::F16] {
        let dir = tmp(&format!("lat-{dtype:?}"));
        let mut m = header(ShardKind::Latents);
        let x =
            Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((2, 4, 2, 3)).unwrap().to_dtype(dtype).unwrap();
        let s = Shard { payload: Payload::Latents(x.clone()), labels: vec![2, 0] };
        m.shards.push(s.write(&dir, &Manifest::shard_file(0), &m).unwrap());
        m.write(&dir, MANIFEST).unwrap();
        let back = Manifest::open(&dir).unwrap().read_shard(&dir, 0).unwrap();
        let Payload::Latents(y) = back.payload else { panic!("latents") };
        assert_eq!(y.dtype(), dtype);
        let d = (y.to_dtype(DType::F32).unwrap() - x.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap();
        assert_eq!(d.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

#[test]
fn a_corrupt_or_truncated_shard_is_named() {
    let dir = tmp("corrupt");
    let m = write_tokens(&dir);
    let path = dir.join("shard-00001.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a; // a label's byte
    std::fs::write(&path, &bytes).unwrap();
    let err = m.read_shard(&dir, 1).unwrap_err().to_string();
    assert!(err.contains("shard-00001.safetensors") && err.contains("corrupt"), "{err}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = m.read_shard(&dir, 1).unwrap_err().to_string();
    assert!(err.contains("shard-00001.safetensors") && err.contains("truncated"), "{err}");
    m.read_shard(&dir, 0).unwrap();
}

#[test]
fn a_token_past_the_vocab_and_a_label_past_the_classes_are_named() {
    let dir = tmp("range");
    let mut m = header(ShardKind::Tokens);
    let mut s = token_shard(2, 0);
    if let Payload::Tokens(ids) = &mut s.payload {
        ids[8] = 77;
    }
    m.shards.push(s.write(&dir, &Manifest::shard_file(0), &m).unwrap());
    let err = m.read_shard(&dir, 0).unwrap_err().to_string();
    assert!(err.contains("token 77 at position 2 of image 1") && err.contains("50 codes"), "{err}");
    let s = Shard { labels: vec![0, 5], ..token_shard(2, 0) };
    m.shards[0] = s.write(&dir, &Manifest::shard_file(0), &m).unwrap();
    let err = m.read_shard(&dir, 0).unwrap_err().to_string();
    assert!(err.contains("label 5 of image 1"), "{err}");
}

#[test]
fn empty_missing_and_foreign_folders_are_refused() {
    let dir = tmp("empty");
    let err = Manifest::open(&dir).unwrap_err().to_string();
    assert!(err.contains("manifest.json") && err.contains("gen tokenize"), "{err}");
    header(ShardKind::Tokens).write(&dir, MANIFEST).unwrap();
    let err = Manifest::open(&dir).unwrap_err().to_string();
    assert!(err.contains("no images"), "{err}");
    let m = write_tokens(&dir);
    std::fs::remove_file(dir.join("shard-00001.safetensors")).unwrap();
    let err = Manifest::open(&dir).unwrap_err().to_string();
    assert!(err.contains("shard-00001.safetensors") && err.contains("missing"), "{err}");
    let err = m.check_tokenizer(&dir, &"cd".repeat(32)).unwrap_err().to_string();
    assert!(err.contains("abababab") && err.contains("cdcdcdcd") && err.contains("re-tokenize"), "{err}");
}

#[test]
fn part_manifests_merge_in_shard_order_and_a_missing_part_is_named() {
    let dir = tmp("merge");
    let base = header(ShardKind::Tokens);
    for (part, index) in [(1, 1), (0, 0), (2, 2)] {
        let mut m = base.clone();
        m.shards.push(token_shard(2, index as u32).write(&dir, &Manifest::shard_file(index), &m).unwrap());
        m.write(&dir, &part_manifest(part, 3)).unwrap();
        if part == 0 {
            // only two of three parts written yet
            let err = merge_parts(&dir).unwrap_err().to_string();
            assert!(err.contains("parts 2 of 3 are missing"), "{err}");
        }
    }
    let merged = merge_parts(&dir).unwrap();
    let files: Vec<&str> = merged.shards.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(files, ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]);
    assert_eq!(Manifest::open(&dir).unwrap(), merged);
}

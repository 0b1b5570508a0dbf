//! Tests of the `.pth` reader: the golden fixtures (`shared/golden/pth`, `shared/golden/tokenizer/f16-tiny`) and
//! hand-made hostile pickles that must fail cleanly (an error, never a panic, hang or huge allocation).

use super::pickle::{unpickle, PickleError, StorageRef, TensorSource};
use super::tensor::{self, TorchDType, View};
use super::{load_state_dict, PthFile, PthValue};
use crate::error::Error;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

// ----- fixtures -----

/// The golden folder, or None (test skipped) when absent; `GEN_REQUIRE_GOLDEN=1` turns absence into a failure.
fn golden() -> Option<PathBuf> {
    let dir = std::env::var_os("GEN_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden")));
    if dir.join("pth/expected.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("GEN_REQUIRE_GOLDEN").as_deref() == Ok("1") {
        panic!("golden fixtures not found at {} (GEN_REQUIRE_GOLDEN=1)", dir.display());
    }
    eprintln!("skipping: golden fixtures not found at {}", dir.display());
    None
}

fn open(golden: &std::path::Path, name: &str) -> crate::Result<PthFile> {
    PthFile::open(&golden.join("pth").join(name))
}

/// `expected.safetensors` entries under `<stem>/`, keyed by the rest of the name.
fn expected(golden: &std::path::Path, stem: &str) -> BTreeMap<String, Tensor> {
    let all = candle_core::safetensors::load(golden.join("pth/expected.safetensors"), &Device::Cpu).unwrap();
    let prefix = format!("{stem}/");
    all.into_iter().filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_owned(), v))).collect()
}

/// dtype, shape and the exact element bits, for bit-exact comparison.
fn raw(t: &Tensor) -> (DType, Vec<usize>, Vec<u8>) {
    let flat = t.flatten_all().unwrap();
    let bytes: Vec<u8> = match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>().unwrap(),
        DType::I16 => flat.to_vec1::<i16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I32 => flat.to_vec1::<i32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => flat.to_vec1::<i64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        DType::F32 => flat.to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        DType::F64 => flat.to_vec1::<f64>().unwrap().iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    (t.dtype(), t.dims().to_vec(), bytes)
}

/// Same names, dtypes, shapes and bits.
fn assert_same(what: &str, got: &[(String, Tensor)], want: &BTreeMap<String, Tensor>) {
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = got_names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want.keys().map(String::as_str).collect::<Vec<_>>(), "{what}: tensor names");
    for (name, tensor) in got {
        assert_eq!(raw(tensor), raw(&want[name]), "{what}: tensor '{name}'");
    }
}

fn message(result: crate::Result<impl std::fmt::Debug>) -> String {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
    msg
}

// ----- valid fixtures -----

#[test]
fn valid_files_return_exactly_the_expected_tensors() {
    let Some(g) = golden() else { return };
    // (file stem, key, prefix of the expected names that the key strips)
    let cases = [
        ("model_key", Some("model"), ""),
        ("state_dict_key", Some("state_dict"), ""),
        ("bare_state_dict", None, ""),
        ("int32_bool", None, ""),
        ("strided_views", None, ""),
        ("nested", Some("ema.inner"), "ema.inner."),
    ];
    for (stem, key, prefix) in cases {
        let got = open(&g, &format!("{stem}.pth")).unwrap().tensors(key).unwrap();
        let want =
            expected(&g, stem).into_iter().map(|(k, v)| (k.strip_prefix(prefix).unwrap().to_owned(), v)).collect();
        assert_same(stem, &got, &want);
    }
}

#[test]
fn state_dict_is_found_without_a_key_in_official_layouts() {
    let Some(g) = golden() else { return };
    for (stem, key) in [("model_key", "model"), ("state_dict_key", "state_dict")] {
        let file = open(&g, &format!("{stem}.pth")).unwrap();
        let auto = file.tensors(None).unwrap();
        assert_same(stem, &auto, &expected(&g, stem));
        let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&auto), names(&file.tensors(Some(key)).unwrap()), "{stem}: auto == explicit key, in order");
    }
    let map = load_state_dict(&g.join("pth/model_key.pth"), None).unwrap();
    assert_eq!(map.len(), 7);
    assert_eq!(map["discriminator.main.1.num_batches_tracked"].dims(), &[] as &[usize]);
    assert_eq!(map["bf16.weight"].dtype(), DType::BF16);
    assert_eq!(map["half.weight"].dtype(), DType::F16);
}

#[test]
fn nested_state_dict_is_reached_by_dotted_key_and_auto_lookup_names_the_keys() {
    let Some(g) = golden() else { return };
    let file = open(&g, "nested.pth").unwrap();
    let under_ema = file.tensors(Some("ema")).unwrap();
    assert!(under_ema.iter().any(|(n, _)| n == "inner.quant_conv.weight"), "names are relative to the key");
    let msg = message(file.tensors(None));
    assert!(msg.contains("nested.pth") && msg.contains("top-level keys: ema"), "{msg}");
}

#[test]
fn bare_tensor_file_returns_its_tensor() {
    let Some(g) = golden() else { return };
    let file = open(&g, "bare_tensor.pth").unwrap();
    let want = expected(&g, "bare_tensor");
    assert_eq!(raw(&file.bare_tensor().unwrap()), raw(&want[""]));
    assert_eq!(file.bare_tensor().unwrap().dims(), &[50, 16]);
    let msg = message(file.tensors(None));
    assert!(msg.contains("bare_tensor()"), "{msg}");
    let msg = message(open(&g, "model_key.pth").unwrap().bare_tensor());
    assert!(msg.contains("not a bare tensor") && msg.contains("model, optimizer, epoch, args"), "{msg}");
}

#[test]
fn int32_and_bool_tensors_are_returned_not_dropped() {
    let Some(g) = golden() else { return };
    let map = load_state_dict(&g.join("pth/int32_bool.pth"), None).unwrap();
    assert_eq!(map.len(), 3);
    assert_eq!(map["mask"].dtype(), DType::U8);
    assert_eq!(map["mask"].to_vec1::<u8>().unwrap(), [1, 0, 1]);
    assert_eq!(map["ids32"].dtype(), DType::I32);
    assert_eq!(map["ids32"].to_vec1::<i32>().unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(map["w"].dims(), &[2, 2]);
}

#[test]
fn strided_views_are_gathered_by_stride_and_offset() {
    let Some(g) = golden() else { return };
    let map = load_state_dict(&g.join("pth/strided_views.pth"), None).unwrap();
    let base = |r: usize, c: usize| (r * 8 + c) as f32; // arange(48).reshape(6, 8)
    let t: Vec<Vec<f32>> = (0..8).map(|i| (0..6).map(|j| base(j, i)).collect()).collect();
    assert_eq!(map["t"].to_vec2::<f32>().unwrap(), t);
    let rows: Vec<Vec<f32>> = [0, 2, 4].iter().map(|&r| (0..8).map(|c| base(r, c)).collect()).collect();
    assert_eq!(map["every_other_row"].to_vec2::<f32>().unwrap(), rows);
    let window: Vec<Vec<f32>> = (2..4).map(|r| (1..5).map(|c| base(r, c)).collect()).collect();
    assert_eq!(map["offset"].to_vec2::<f32>().unwrap(), window);
}

#[test]
fn namespace_and_plain_values_are_readable_by_dotted_path() {
    let Some(g) = golden() else { return };
    let file = open(&g, "model_key.pth").unwrap();
    assert_eq!(file.top_keys(), ["model", "optimizer", "epoch", "args"]);
    assert!(matches!(file.get("args"), Some(PthValue::Namespace(_))));
    assert_eq!(file.get("args.embed_dim").and_then(PthValue::as_int), Some(8));
    assert_eq!(file.get("args.lr").and_then(PthValue::as_f64), Some(5e-4));
    assert_eq!(file.get("args.local_embedding_path").and_then(PthValue::as_str), Some("codebook.pth"));
    assert_eq!(file.get("epoch").and_then(PthValue::as_int), Some(3));
    assert_eq!(file.get("optimizer.param_groups.0.lr").and_then(PthValue::as_f64), Some(5e-4));
    // A key that contains dots is found whole.
    assert!(file.get("model.quant_conv.weight").and_then(PthValue::as_tensor).is_some());
    assert!(file.get("args.no_such_field").is_none());
}

#[test]
fn key_without_tensors_or_missing_key_is_an_error_naming_it() {
    let Some(g) = golden() else { return };
    let file = open(&g, "model_key.pth").unwrap();
    let msg = message(file.tensors(Some("optimizer")));
    assert!(msg.contains("model_key.pth") && msg.contains("no tensors under key 'optimizer'"), "{msg}");
    let msg = message(file.tensors(Some("epoch")));
    assert!(msg.contains("'epoch'") && msg.contains("int"), "{msg}");
    let err = file.tensors(Some("ema")).unwrap_err();
    assert!(matches!(&err, Error::MissingKey { key, .. } if key == "ema"), "{err}");
    assert!(err.to_string().contains("top-level keys: model, optimizer, epoch, args"), "{err}");
}

// ----- hostile and broken fixtures -----

#[test]
fn evil_global_is_refused_naming_builtins_print() {
    let Some(g) = golden() else { return };
    match open(&g, "evil_global.pth") {
        Err(Error::ForbiddenGlobal { global, path }) => {
            assert_eq!(global, "builtins.print");
            assert!(path.ends_with("evil_global.pth"));
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
}

#[test]
fn evil_os_system_is_refused_naming_the_global() {
    let Some(g) = golden() else { return };
    match open(&g, "evil_os_system.pth") {
        Err(Error::ForbiddenGlobal { global, .. }) => {
            assert!(global == "posix.system" || global == "os.system", "{global}")
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
}

#[test]
fn broken_files_give_one_line_errors() {
    let Some(g) = golden() else { return };
    let msg = message(open(&g, "truncated.pth"));
    assert!(msg.contains("truncated.pth") && msg.contains("not a readable zip archive"), "{msg}");
    let msg = message(open(&g, "bad_pickle.pth"));
    assert!(msg.contains("bad_pickle.pth") && msg.contains("pickle ends mid-stream"), "{msg}");
    let msg = message(open(&g, "legacy_format.pth"));
    assert!(msg.contains("legacy (pre-1.6") && msg.contains("torch.save(torch.load(f), f2)"), "{msg}");
    let msg = message(PthFile::open(&g.join("pth/README.md")));
    assert!(msg.contains("no zip header"), "{msg}");
    let err = PthFile::open(&g.join("pth/no_such_file.pth")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

// ----- the official VQGAN-LC checkpoint layout -----

#[test]
fn official_checkpoint_matches_weights_safetensors() {
    let Some(g) = golden() else { return };
    let dir = g.join("tokenizer/f16-tiny");
    let file = PthFile::open(&dir.join("checkpoint.pth")).unwrap();
    assert_eq!(file.top_keys(), ["state_dict", "opt_ae", "opt_dist", "epoch", "scaler_ae", "scaler_dist", "args"]);
    let want: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu).unwrap().into_iter().collect();
    assert_eq!(want.len(), 337);
    assert_same("checkpoint.pth (auto)", &file.tensors(None).unwrap(), &want);
    assert_same("checkpoint.pth (state_dict)", &file.tensors(Some("state_dict")).unwrap(), &want);
    let Some(PthValue::Namespace(args)) = file.get("args") else { panic!("args is not a Namespace") };
    assert!(args.iter().any(|(k, _)| k == "embed_dim"));
    assert_eq!(file.get("args.embed_dim").and_then(PthValue::as_int), Some(8));
    assert_eq!(file.get("args.local_embedding_path").and_then(PthValue::as_str), Some("codebook_init.pth"));
    assert_eq!(file.get("epoch").and_then(PthValue::as_int), Some(0));
    assert_eq!(file.get("scaler_ae.scale").and_then(PthValue::as_f64), Some(65536.0));
}

#[test]
fn codebook_init_is_a_bare_f32_tensor_equal_to_tok_embeddings() {
    let Some(g) = golden() else { return };
    let dir = g.join("tokenizer/f16-tiny");
    let codebook = PthFile::open(&dir.join("codebook_init.pth")).unwrap().bare_tensor().unwrap();
    assert_eq!((codebook.dtype(), codebook.dims()), (DType::F32, &[1000, 32][..]));
    let weights = candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(raw(&codebook), raw(&weights["tok_embeddings.weight"]));
}

// ----- the pickle VM on hand-made input -----

/// Storages held in memory; tensors are rebuilt exactly as from an archive.
#[derive(Default)]
struct MemSource(HashMap<String, Vec<u8>>);

impl TensorSource for MemSource {
    fn tensor(&mut self, storage: &StorageRef, view: &View) -> Result<Tensor, String> {
        let bytes = self.0.get(&storage.key).ok_or("no such storage")?;
        let nbytes = storage.numel.checked_mul(storage.dtype.elem_size().unwrap_or(1)).ok_or("too large")?;
        tensor::rebuild(bytes.get(..nbytes).ok_or("storage too short")?, storage.dtype, view, false)
    }
}

fn run(pickle: &[u8]) -> Result<PthValue, PickleError> {
    unpickle(pickle, &mut MemSource::default())
}

fn format_error(pickle: &[u8]) -> String {
    match run(pickle) {
        Err(PickleError::Format(msg)) => msg,
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// `pickle.dumps(obj, protocol)` of OrderedDict a=[1, 2.5, True, None, b'xy', (1, 2)], b={'c': 'd', 7: 'seven'},
/// big=2**70, neg=-5, neg_long=-2**40, s={3}, ns=argparse.Namespace(embed_dim=8, lr=1e-4), by CPython 3.
const PROTO2: &str = "800263636f6c6c656374696f6e730a4f726465726564446963740a7100295271012858010000006171025d7103284b01474004000000000000884e635f636f646563730a656e636f64650a710458020000007879710558060000006c6174696e3171068671075271084b014b0286710965580100000062710a7d710b28580100000063710c580100000064710d4b075805000000736576656e710e755803000000626967710f8a0900000000000000004058030000006e656771104afbffffff58080000006e65675f6c6f6e6771118a060000000000ff5801000000737112635f5f6275696c74696e5f5f0a7365740a71135d71144b036185711552711658020000006e7371176361726770617273650a4e616d6573706163650a7118298171197d711a285809000000656d6265645f64696d711b4b0858020000006c72711c473f1a36e2eb1c432d7562752e";
const PROTO4: &str = "800495d9000000000000008c0b636f6c6c656374696f6e73948c0b4f72646572656444696374949394295294288c0161945d94284b01474004000000000000884e43027879944b014b028694658c0162947d94288c0163948c0164944b078c05736576656e94758c03626967948a090000000000000000408c036e6567944afbffffff8c086e65675f6c6f6e67948a060000000000ff8c0173948f94284b03908c026e73948c086172677061727365948c094e616d6573706163659493942981947d94288c09656d6265645f64696d944b088c026c7294473f1a36e2eb1c432d7562752e";

#[test]
fn python_pickles_of_protocols_2_and_4_rebuild_as_plain_data() {
    for (proto, text) in [(2, PROTO2), (4, PROTO4)] {
        let value = run(&hex(text)).unwrap_or_else(|e| panic!("protocol {proto}: {e:?}"));
        let a = value.get("a").unwrap();
        let PthValue::List(items) = a else { panic!("a is {a:?}") };
        assert!(
            matches!(items[..], [PthValue::Int(1), PthValue::Float(f), PthValue::Bool(true), PthValue::None, PthValue::Bytes(ref b), PthValue::Tuple(ref t)]
            if f == 2.5 && b == b"xy" && t.len() == 2),
            "protocol {proto}: {items:?}"
        );
        assert_eq!(value.get("b.c").and_then(PthValue::as_str), Some("d"));
        assert_eq!(value.get("b.7").and_then(PthValue::as_str), Some("seven"));
        assert!(matches!(value.get("big"), Some(PthValue::Skipped(_))));
        assert_eq!(value.get("neg").and_then(PthValue::as_int), Some(-5));
        assert_eq!(value.get("neg_long").and_then(PthValue::as_int), Some(-(1 << 40)));
        assert!(matches!(value.get("s"), Some(PthValue::List(v)) if matches!(v[..], [PthValue::Int(3)])));
        assert_eq!(value.get("ns.embed_dim").and_then(PthValue::as_int), Some(8));
        assert_eq!(value.get("ns.lr").and_then(PthValue::as_f64), Some(1e-4));
    }
}

/// `{'w': _rebuild_tensor_v2(('storage', torch.LongStorage, '0', 'cpu', 4), offset, (3,), (1,), False, OrderedDict())}`
fn tensor_pickle(offset: u8) -> Vec<u8> {
    let mut p = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nLongStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ");
    p.extend([b'K', offset]);
    p.extend(b"K\x03\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

#[test]
fn tensors_are_rebuilt_from_persistent_ids() {
    let mut source = MemSource::default();
    source.0.insert("0".into(), [10i64, -20, 30, -40].iter().flat_map(|v| v.to_le_bytes()).collect());
    let value = unpickle(&tensor_pickle(1), &mut source).unwrap();
    assert_eq!(value.get("w").and_then(PthValue::as_tensor).unwrap().to_vec1::<i64>().unwrap(), [-20, 30, -40]);
    // One element further the view runs past the storage: an error, not a panic.
    let Err(PickleError::Format(msg)) = unpickle(&tensor_pickle(2), &mut source) else { panic!("expected an error") };
    assert!(msg.contains("reaches element 4 of a storage of 4 elements") && msg.contains("REDUCE"), "{msg}");
}

#[test]
fn forbidden_globals_are_refused_whichever_opcode_names_them() {
    let cases: [(&[u8], &str); 13] = [
        (b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.", "posix.system"),
        (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "os.system"),
        (b"(X\x04\x00\x00\x00trueisubprocess\ncall\n.", "subprocess.call"),
        (b"c__builtin__\neval\n.", "builtins.eval"),
        (b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93X\x04\x00\x00\x00true\x85R.", "subprocess.Popen"),
        (b"cbuiltins\nexec\nX\x06\x00\x00\x00print()\x85R.", "builtins.exec"),
        // getattr(__import__('os'), 'system'): the classic two-step gadget stops at its first global.
        (
            b"cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85RX\x06\x00\x00\x00system\x86R.",
            "builtins.getattr",
        ),
        (b"cimportlib\nimport_module\nX\x02\x00\x00\x00os\x85R.", "importlib.import_module"),
        // What objects' __reduce__ returns: copyreg reconstructors, partial applications, method callers.
        (b"ccopy_reg\n_reconstructor\n.", "copyreg._reconstructor"),
        (b"cfunctools\npartial\n.", "functools.partial"),
        (b"coperator\nmethodcaller\n.", "operator.methodcaller"),
        // torch's own gadgets: a nested torch.load of attacker bytes, and a module from a state.
        (b"ctorch.storage\n_load_from_bytes\n.", "torch.storage._load_from_bytes"),
        (b"ctorch\nload\n.", "torch.load"),
    ];
    for (pickle, name) in cases {
        match run(pickle) {
            Err(PickleError::Forbidden(global)) => assert_eq!(global, name),
            other => panic!("{name}: expected Forbidden, got {other:?}"),
        }
    }
}

#[test]
fn allowed_globals_cannot_be_chained_into_calling_anything_else() {
    // _rebuild_from_type_v2 may only wrap the plain tensor rebuilds, whatever allowed callable it is handed.
    let p = b"ctorch._tensor\n_rebuild_from_type_v2\n(ccollections\nOrderedDict\nctorch\nTensor\n)}tR.";
    assert!(format_error(p).contains("only allowed for plain tensors"));
    // A value is never callable: REDUCE on a string or a dtype marker is refused.
    assert!(format_error(b"X\x01\x00\x00\x00a)R.").contains("calls a str"));
    assert!(format_error(b"ctorch\nfloat32\n)R.").contains("torch.float32"));
}

#[test]
fn malformed_pickles_give_one_line_format_errors() {
    let msg = format_error(b"\x80\x02\xff");
    assert_eq!(msg, "unknown pickle opcode 0xff at byte 2 of data.pkl");
    let msg = format_error(b"\x80\x02}q\x00(X\x01\x00\x00\x00a");
    assert!(msg.contains("pickle ends mid-stream"), "{msg}");
    assert!(format_error(b"\x80\x02}").contains("no STOP opcode"));
    assert!(format_error(b"X\x05\x00\x00\x00ab").contains("mid-stream (BINUNICODE at byte 0"));
    assert!(format_error(b"R.").contains("stack underflow"));
    assert!(format_error(b"(R.").contains("stack underflow"), "REDUCE may not pop below a MARK");
    assert!(format_error(b"h\x05.").contains("memo entry 5 is read before it is written"));
    assert!(format_error(b"K\x01K\x02a.").contains("cannot append to a int"));
    assert!(format_error(b"\x80\x09.").contains("protocol 9"));
    assert!(format_error(b"ccollections\nOrderedDict\nK\x01K\x02\x86R.").contains("collections.OrderedDict"));
    assert!(format_error(b"ctorch\nfloat32\n)R.").contains("torch.float32"));
    for msg in [format_error(b"\x80\x02\xff"), format_error(b"X\x05\x00\x00\x00ab")] {
        assert!(!msg.contains('\n'));
    }
}

#[test]
fn huge_length_operands_fail_without_allocating() {
    let mut p = b"\x8d".to_vec(); // BINUNICODE8 with length 2^64 - 1
    p.extend(u64::MAX.to_le_bytes());
    assert!(format_error(&p).contains("mid-stream"));
    assert!(format_error(b"B\xff\xff\xff\xffab").contains("mid-stream"));
    assert!(format_error(b"\x8b\xff\xff\xff\x7f\x00").contains("mid-stream"));
}

#[test]
fn self_referencing_and_deeply_nested_structures_are_refused_without_overflow() {
    // l = []; l.append(l)
    assert!(format_error(b"]q\x00h\x00a.").contains("nested deeper"));
    // 200 000 nested lists: bounded depth, no recursion in the VM itself.
    let n = 200_000;
    let mut p = vec![b']'; n];
    p.extend(std::iter::repeat_n(b'a', n - 1));
    p.push(b'.');
    assert!(format_error(&p).contains("nested deeper"));
}

#[test]
fn shared_references_cannot_expand_into_a_huge_tree() {
    // L0 = []; L(i) = [L(i-1), L(i-1)]: 60 levels are 2^60 nodes once copied out.
    let mut p = b"]q\x00".to_vec();
    for i in 1u8..60 {
        p.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
    }
    p.push(b'.');
    assert!(format_error(&p).contains("expand to far more data"));
}

#[test]
fn repeated_dict_keys_keep_the_first_position_and_the_last_value() {
    let value = run(b"}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02X\x01\x00\x00\x00aK\x03u.").unwrap();
    let PthValue::Dict(entries) = value else { panic!() };
    let flat: Vec<(String, i64)> =
        entries.iter().map(|(k, v)| (k.as_str().unwrap().into(), v.as_int().unwrap())).collect();
    assert_eq!(flat, [("a".to_string(), 3), ("b".to_string(), 2)]);
}

#[test]
fn dotted_lookup_prefers_whole_keys_that_contain_dots() {
    let s = |x: &str| PthValue::Str(x.into());
    let root = PthValue::Dict(vec![
        (s("a"), PthValue::Dict(vec![(s("b"), PthValue::Int(1))])),
        (s("a.b"), PthValue::Int(2)),
        (s("x"), PthValue::Dict(vec![(s("y.z"), PthValue::Int(3))])),
    ]);
    assert_eq!(root.get("a.b").and_then(PthValue::as_int), Some(2));
    assert_eq!(root.get("x.y.z").and_then(PthValue::as_int), Some(3));
    assert!(root.get("a.c").is_none());
}

// ----- rebuilding views -----

fn view(offset: usize, size: &[usize], stride: &[usize]) -> View {
    View { offset, size: size.to_vec(), stride: stride.to_vec() }
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

#[test]
fn views_outside_their_storage_or_absurdly_large_are_refused() {
    let storage = f32_bytes((0..6).map(|v| v as f32));
    let f32 = TorchDType::F32;
    let cases = [
        (view(6, &[1], &[1]), "reaches element 6"),
        (view(0, &[2, 3], &[4, 1]), "reaches element 6"),
        (view(0, &[usize::MAX, 2], &[1, 1]), "overflows"),
        (view(0, &[2], &[usize::MAX]), "reaches element 18446744073709551615"),
        (view(0, &[3], &[usize::MAX]), "overflows"),
        (view(0, &[2], &[1, 1]), "differ in length"),
        (view(0, &[1 << 20, 1 << 20], &[0, 0]), "expands a storage of 6 elements"),
    ];
    for (v, want) in cases {
        let err = tensor::rebuild(&storage, f32, &v, false).unwrap_err();
        assert!(err.contains(want), "{v:?}: {err}");
    }
}

#[test]
fn views_rebuild_expanded_scalar_empty_and_big_endian_tensors() {
    let storage = f32_bytes((0..6).map(|v| v as f32));
    let f32 = TorchDType::F32;
    let expanded = tensor::rebuild(&storage, f32, &view(1, &[2, 3], &[0, 1]), false).unwrap();
    assert_eq!(expanded.to_vec2::<f32>().unwrap(), [[1., 2., 3.], [1., 2., 3.]]);
    let scalar = tensor::rebuild(&storage, f32, &view(5, &[], &[]), false).unwrap();
    assert_eq!(scalar.to_scalar::<f32>().unwrap(), 5.);
    let empty = tensor::rebuild(&storage, f32, &view(0, &[0, 3], &[3, 1]), false).unwrap();
    assert_eq!(empty.dims(), &[0, 3]);
    let size_one_dims_ignore_their_stride = tensor::rebuild(&storage, f32, &view(0, &[1, 6], &[99, 1]), false).unwrap();
    assert_eq!(size_one_dims_ignore_their_stride.dims(), &[1, 6]);
    let big: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_be_bytes()).collect();
    let swapped = tensor::rebuild(&big, f32, &view(0, &[6], &[1]), true).unwrap();
    assert_eq!(swapped.to_vec1::<f32>().unwrap(), [0., 1., 2., 3., 4., 5.]);
}

#[test]
fn bool_and_int8_are_widened_exactly() {
    let bools = tensor::rebuild(&[0, 1, 2, 255], TorchDType::Bool, &view(0, &[4], &[1]), false).unwrap();
    assert_eq!((bools.dtype(), bools.to_vec1::<u8>().unwrap()), (DType::U8, vec![0, 1, 1, 1]));
    let int8 = tensor::rebuild(&[0x80, 0xff, 0, 0x7f], TorchDType::I8, &view(0, &[4], &[1]), false).unwrap();
    assert_eq!((int8.dtype(), int8.to_vec1::<i64>().unwrap()), (DType::I64, vec![-128, -1, 0, 127]));
}

#[test]
fn unsupported_dtype_is_an_error_naming_the_tensor() {
    let note = tensor::unsupported_note(TorchDType::Unsupported("complex64"), &[2]);
    let file = PthFile {
        root: PthValue::Dict(vec![(PthValue::Str("c".into()), PthValue::Skipped(note))]),
        path: PathBuf::from("complex.pth"),
    };
    let msg = message(file.tensors(None));
    assert!(msg.contains("complex.pth") && msg.contains("tensor 'c'") && msg.contains("complex64"), "{msg}");
}

// ----- robustness against corrupted real pickles -----

/// Every prefix of a real `data.pkl` fails cleanly, and random byte corruptions never panic.
#[test]
fn truncated_or_corrupted_real_pickles_never_panic() {
    let Some(g) = golden() else { return };
    let mut zip = zip::ZipArchive::new(std::fs::File::open(g.join("pth/model_key.pth")).unwrap()).unwrap();
    let mut pickle = vec![];
    std::io::Read::read_to_end(&mut zip.by_name("model_key/data.pkl").unwrap(), &mut pickle).unwrap();
    // Zero-filled storages as large as any key asks (capped), so corrupted views exercise the bounds checks.
    struct Zeros;
    impl TensorSource for Zeros {
        fn tensor(&mut self, storage: &StorageRef, view: &View) -> Result<Tensor, String> {
            let nbytes = storage.numel.saturating_mul(storage.dtype.elem_size().unwrap_or(1));
            if nbytes > 1 << 20 {
                return Err("too large for the test".into());
            }
            tensor::rebuild(&vec![0u8; nbytes], storage.dtype, view, false)
        }
    }
    for len in 0..pickle.len() {
        assert!(unpickle(&pickle[..len], &mut Zeros).is_err(), "prefix of {len} bytes was accepted");
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut corrupted = pickle.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % corrupted.len() as u64) as usize;
            corrupted[at] = next() as u8;
        }
        let _ = unpickle(&corrupted, &mut Zeros);
    }
}

// ----- limits on hostile but well-formed input -----

#[test]
fn repeated_calls_on_one_big_tuple_exhaust_the_copy_budget() {
    // L = [0] * 100_000; then set(L) 10 000 times.
    let mut p = b"]q\x00(".to_vec();
    p.extend(b"K\x00".repeat(100_000));
    p.extend(b"ec__builtin__\nset\nq\x01");
    p.extend(b"h\x01h\x00\x85R0".repeat(10_000));
    p.extend(b"N.");
    assert!(format_error(&p).contains("copies far more data than it holds"));
}

/// A pickle rebuilding `count` f32 tensors, each the whole storage '0' of `numel` elements (as a list, or the
/// bare tensor when `count` is None).
fn rebuild_pickle(count: Option<usize>, numel: u32) -> Vec<u8> {
    let mut args = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ".to_vec();
    args.extend(numel.to_le_bytes());
    args.extend(b"tQK\x00J");
    args.extend(numel.to_le_bytes());
    args.extend(b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)R");
    let first = [b"ctorch._utils\n_rebuild_tensor_v2\nq\x00(".as_slice(), &args, b"tq\x01R"].concat();
    let mut p = b"\x80\x02".to_vec();
    match count {
        None => p.extend(&first),
        Some(n) => {
            p.extend(b"](");
            p.extend(&first);
            p.extend(b"h\x00h\x01R".repeat(n - 1));
            p.extend(b"e");
        }
    }
    p.push(b'.');
    p
}

/// Writes a stored (uncompressed) zip like torch.save's into the temp dir.
fn write_zip(name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("gen-pth-test-{}-{name}", std::process::id()));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (entry, bytes) in entries {
        zip.start_file(*entry, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

#[test]
fn any_archive_folder_and_big_endian_storages_are_read() {
    let storage: Vec<u8> = [1.5f32, -2.0, 3.25].iter().flat_map(|v| v.to_be_bytes()).collect();
    let pickle = rebuild_pickle(None, 3);
    let path = write_zip(
        "big-endian.pth",
        &[("some folder/data.pkl", &pickle), ("some folder/byteorder", b"big"), ("some folder/data/0", &storage)],
    );
    let file = PthFile::open(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(file.unwrap().bare_tensor().unwrap().to_vec1::<f32>().unwrap(), [1.5, -2.0, 3.25]);
}

#[test]
fn storages_shorter_than_declared_are_refused() {
    let pickle = rebuild_pickle(None, 3);
    let path = write_zip("short.pth", &[("a/data.pkl", &pickle), ("a/data/0", &[0u8; 8])]);
    let msg = message(PthFile::open(&path));
    std::fs::remove_file(&path).unwrap();
    assert!(msg.contains("storage a/data/0 holds 8 bytes, but the pickle says 12"), "{msg}");
}

#[test]
fn rebuilding_one_storage_over_and_over_hits_the_output_cap() {
    let numel = 1u32 << 20; // 4 MiB of f32
    let pickle = rebuild_pickle(Some(1000), numel);
    let path = write_zip("repeat.pth", &[("a/data.pkl", &pickle), ("a/data/0", &vec![0u8; numel as usize * 4])]);
    let msg = message(PthFile::open(&path));
    std::fs::remove_file(&path).unwrap();
    assert!(msg.contains("far more data than the file holds"), "{msg}");
    // A handful of repeats is fine.
    let pickle = rebuild_pickle(Some(3), 4);
    let path = write_zip("few.pth", &[("a/data.pkl", &pickle), ("a/data/0", &[0u8; 16])]);
    let file = PthFile::open(&path);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(file.unwrap().root, PthValue::List(v) if v.len() == 3));
}

#[test]
fn rebuild_tensor_v3_retypes_its_byte_storage() {
    // _rebuild_tensor_v3(('storage', torch.UntypedStorage, '0', 'cpu', 8), 0, (2,), (1,), False, {}, torch.int32)
    let p = b"ctorch._utils\n_rebuild_tensor_v3\n((X\x07\x00\x00\x00storagectorch\nUntypedStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQK\x00K\x02\x85K\x01\x85\x89}ctorch\nint32\ntR.";
    let mut source = MemSource::default();
    source.0.insert("0".into(), [7i32, -9].iter().flat_map(|v| v.to_le_bytes()).collect());
    let value = unpickle(p, &mut source).unwrap();
    assert_eq!(value.as_tensor().unwrap().to_vec1::<i32>().unwrap(), [7, -9]);
    let p = [&p[..p.len() - 9], b"uint16\ntR."].concat();
    assert!(matches!(unpickle(&p, &mut source).unwrap(), PthValue::Skipped(note) if note.contains("uint16")));
}

// ----- every copy counts against the budget -----

/// BINUNICODE of `text`.
fn unicode(text: &[u8]) -> Vec<u8> {
    [b"X".as_slice(), &(text.len() as u32).to_le_bytes(), text].concat()
}

#[test]
fn repeated_build_of_a_namespace_from_one_big_dict_exhausts_the_copy_budget() {
    // d = {k_i: 0 for 100 keys of 1000 bytes}; ns = Namespace(); then BUILD(ns, d) 1000 times.
    let mut p = b"}q\x00(".to_vec();
    for i in 0..100u8 {
        p.extend(unicode(
            &[b'a' + i % 26; 1000].iter().enumerate().map(|(j, &b)| if j == 0 { i } else { b }).collect::<Vec<_>>(),
        ));
        p.extend(b"K\x00");
    }
    p.extend(b"u0cargparse\nNamespace\n)R");
    p.extend(b"h\x00b".repeat(1000));
    p.push(b'.');
    assert!(format_error(&p).contains("copies far more data than it holds"));
}

#[test]
fn repeated_torch_device_calls_on_one_big_string_exhaust_the_copy_budget() {
    let mut p = b"ctorch\ndevice\nq\x00".to_vec();
    p.extend(unicode(&[b'c'; 100_000]));
    p.extend(b"q\x010");
    p.extend(b"h\x00h\x01\x85R0".repeat(1000));
    p.extend(b"N.");
    assert!(format_error(&p).contains("copies far more data than it holds"));
}

#[test]
fn repeated_persistent_ids_with_one_big_key_exhaust_the_copy_budget() {
    // pid = ('storage', FloatStorage, <100 KB key>, 'cpu', 1); BINPERSID(pid) 1000 times.
    let mut p = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n".to_vec();
    p.extend(unicode(&[b'k'; 100_000]));
    p.extend(b"X\x03\x00\x00\x00cpuK\x01tq\x00");
    p.extend(b"h\x00Q0".repeat(1000));
    p.push(b'.');
    assert!(format_error(&p).contains("copies far more data than it holds"));
}

#[test]
fn repeated_v3_rebuilds_of_one_big_keyed_storage_exhaust_the_copy_budget() {
    let key = vec![b'k'; 100_000];
    let mut p = b"ctorch._utils\n_rebuild_tensor_v3\nq\x00((X\x07\x00\x00\x00storagectorch\nUntypedStorage\n".to_vec();
    p.extend(unicode(&key));
    p.extend(b"X\x03\x00\x00\x00cpuK\x04tQK\x00K\x01\x85K\x01\x85\x89}ctorch\nint32\ntq\x01R0");
    p.extend(b"h\x00h\x01R0".repeat(1000));
    p.extend(b"N.");
    let mut source = MemSource::default();
    source.0.insert(String::from_utf8(key).unwrap(), vec![0u8; 4]);
    match unpickle(&p, &mut source) {
        Err(PickleError::Format(msg)) => assert!(msg.contains("copies far more data than it holds"), "{msg}"),
        other => panic!("expected the copy budget to run out, got {other:?}"),
    }
}

#[test]
fn a_forged_zip64_entry_count_is_an_error_not_an_abort() {
    // A tiny file whose ZIP64 end record claims 2^40 entries: the zip crate would try to reserve ~200 TB.
    let f = crate::zip_guard::tests::forged_zip64(60, 1 << 40);
    let path = std::env::temp_dir().join(format!("gen-pth-test-{}-zip64.pth", std::process::id()));
    std::fs::write(&path, &f).unwrap();
    let msg = message(PthFile::open(&path));
    std::fs::remove_file(&path).unwrap();
    assert!(msg.contains("1099511627776 entries") && msg.contains("corrupt zip archive"), "{msg}");
}

#[test]
fn an_entry_claiming_more_compressed_bytes_than_the_file_is_refused() {
    // A real archive whose data.pkl header is edited to claim a 2^40-byte compressed size (ZIP64 would be
    // needed for that; here the central directory's 32-bit field says 0xFFFFFFF0).
    let pickle = rebuild_pickle(None, 1);
    let path = write_zip("bigclaim.pth", &[("a/data.pkl", &pickle), ("a/data/0", &[0u8; 4])]);
    let mut bytes = std::fs::read(&path).unwrap();
    let cd = memchr::memmem::find(&bytes, b"PK\x01\x02").unwrap();
    bytes[cd + 20..cd + 24].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()); // compressed size
    bytes[cd + 24..cd + 28].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()); // uncompressed size
    std::fs::write(&path, &bytes).unwrap();
    let msg = message(PthFile::open(&path));
    std::fs::remove_file(&path).unwrap();
    assert!(msg.contains("a/data.pkl") || msg.contains("zip"), "{msg}");
    assert!(!msg.contains('\n'));
}

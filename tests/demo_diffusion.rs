//! The shipped demo generators (`models/fmnist/{dit,sit,ldm}`): each loads from the clone alone with its paired tokenizer, and what it draws is what
//! was asked for: the shipped classifier judges its samples of three classes with its recommended
//! sampling (the model cards give all ten classes at 100 samples each; the floor here is 80% on 10 per
//! class, so seed-to-seed spread does not fail CI).

use std::path::{Path, PathBuf};

use gen_diffusion::load::read_generator;
use gen_tests::{run_gen, temp_dir};

const SHIPPED: [(&str, gen_runtime::ModelKind); 3] =
    [("dit", gen_runtime::ModelKind::Dit), ("sit", gen_runtime::ModelKind::Sit), ("ldm", gen_runtime::ModelKind::Ldm)];

/// Three classes each model draws reliably (100% in its model card), by id and name.
fn classes(kind: &str) -> [(&'static str, &'static str); 3] {
    match kind {
        "dit" => [("1", "Trouser"), ("8", "Bag"), ("9", "Ankle boot")],
        "sit" => [("1", "Trouser"), ("7", "Sneaker"), ("8", "Bag")],
        _ => [("1", "Trouser"), ("3", "Dress"), ("5", "Sandal")],
    }
}

fn shipped(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist").join(kind)
}

#[test]
fn the_shipped_folders_are_intact_and_paired() {
    for (kind, k) in SHIPPED {
        let dir = gen_runtime::ModelDir::open(&shipped(kind), k).unwrap();
        dir.verify().unwrap();
        let w = read_generator(&shipped(kind), &Default::default()).unwrap();
        assert_eq!(w.arch.latent(), (8, 8), "{kind}");
        assert_eq!(w.arch.num_classes(), 10);
        assert_eq!(w.class_names[7], "Sneaker");
        let tok = w.tokenizer_path.as_ref().expect("the paired tokenizer");
        assert_eq!(&gen_tokenizer::tokenizer_sha256(tok).unwrap(), w.tokenizer_sha256.as_ref().unwrap());
        assert!(w.sampling.is_some(), "{kind}: the recommended sampling");
    }
}

#[test]
fn the_shipped_generators_draw_the_requested_classes() {
    let dir = temp_dir("demo-diffusion");
    for (kind, _) in SHIPPED {
        let acc = gen_tests::shipped_class_accuracy(&|a| run_gen!(a), kind, &classes(kind), &dir);
        for ((_, class), acc) in classes(kind).iter().zip(acc) {
            assert!(acc >= 80.0, "{kind} {class}: {acc}% of the samples judged as asked");
        }
    }
}

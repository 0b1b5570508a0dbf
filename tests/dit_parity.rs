//! Golden parity of DiT-LC against the official `dit-lc/models.py` and `diffusion/` (`../shared/golden/dit`,
//! case d1; its README says how each tensor was made and sizes the tolerances): the network and its
//! intermediates, classifier-free guidance with the official 3-channel quirk, the schedule and respacing,
//! `q_sample`, `p_mean_variance`, the training losses (eval and train mode), one DDPM and one DDIM η=1
//! step, and the whole 10-step DDPM and DDIM trajectories.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use gen_diffusion::denoiser::{Denoiser, GuideChannels, Guided};
use gen_diffusion::dit::{Dit, DitTrace};
use gen_diffusion::embed::{drop_labels, pos_embed_2d, timestep_features};
use gen_diffusion::gaussian::sample::{sample_loop, GaussianSampler};
use gen_diffusion::gaussian::{linear_betas, space_timesteps, steps_of, GaussianDiffusion, Schedule};
use gen_diffusion::noise::{ReplayNoise, ZeroNoise};
use gen_nn::Weights;
use gen_tests::{assert_close, device, fixture, load, OutputTolerances};

struct D1 {
    tol: OutputTolerances,
    model: Dit,
    files: HashMap<String, HashMap<String, Tensor>>,
}

impl D1 {
    fn open() -> Option<D1> {
        let root = fixture("dit")?;
        let weights = load(&root.join("d1/weights.safetensors"));
        let config = gen_tests::golden_tiny_dit();
        let w = Weights::new("d1", weights);
        let model = Dit::new(w.var_builder(DType::F32, &device()), &config).unwrap();
        assert!(w.unused().is_empty(), "weights the model never read: {:?}", w.unused());
        let files = ["forward", "diffusion", "sampling", "schedule"]
            .iter()
            .map(|f| (f.to_string(), load(&root.join(format!("d1/{f}.safetensors")))))
            .collect();
        Some(D1 { tol: OutputTolerances::open(&root), model, files })
    }

    fn t(&self, file: &str, name: &str) -> Tensor {
        self.files[file].get(name).unwrap_or_else(|| panic!("{file}: no {name}")).to_device(&device()).unwrap()
    }

    fn check(&self, name: &str, got: &Tensor) {
        let file = self.files.iter().find(|(_, f)| f.contains_key(name)).map(|(n, _)| n.clone()).unwrap();
        self.tol.check(name, got, &self.t(&file, name));
    }
}

fn f32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

#[test]
fn d1_network_size() {
    // no fixture needed: the count the README gives for the d1 network
    let c = gen_tests::golden_tiny_dit();
    assert_eq!(c.parameter_count(), 186_304);
    assert_eq!(c.null_class(), Some(10));
}

#[test]
fn d1_forward_and_intermediates() {
    let Some(d) = D1::open() else { return };
    let (x, t, y) = (d.t("forward", "fwd.x"), d.t("forward", "fwd.t"), d.t("forward", "fwd.y"));
    d.check("fwd.t_freq", &timestep_features(&t, 256, 10_000.0).unwrap());
    let mut trace = DitTrace::default();
    let out = d.model.forward_traced(&x, &f32s(&t), &y, Some(&mut trace)).unwrap();
    d.check("fwd.out", &out);
    d.check("fwd.t_emb", trace.t_emb.as_ref().unwrap());
    d.check("fwd.y_emb", trace.y_emb.as_ref().unwrap());
    d.check("fwd.x_tokens", trace.x_tokens.as_ref().unwrap());
    for i in 0..2 {
        d.check(&format!("fwd.block{i}_mod"), &trace.block_mods[i]);
        d.check(&format!("fwd.block{i}"), &trace.blocks[i]);
    }
    d.check("fwd.final_tokens", trace.final_tokens.as_ref().unwrap());
    // the stored pos_embed is the official fixed table: ours reproduces it
    let ours = Tensor::from_vec(pos_embed_2d(64, 4), (1, 16, 64), &device()).unwrap();
    assert_close("pos_embed", &ours, d.model.pos_embed(), 1e-7, 0.0);
}

#[test]
fn d1_guidance_guides_the_first_three_channels_like_the_official_code() {
    let Some(d) = D1::open() else { return };
    let (x, t, y) = (d.t("forward", "cfg.x"), f32s(&d.t("forward", "cfg.t")), d.t("forward", "cfg.y"));
    for (scale, name) in [(4.0, "cfg.out"), (8.0, "cfg.out_s8")] {
        let g = Guided { model: &d.model, scale, channels: GuideChannels::OFFICIAL };
        d.check(name, &g.forward(&x, &t, &y).unwrap());
    }
    // guiding every latent channel changes channels 3..7 of ε and leaves the variance channels alone
    let all = Guided { model: &d.model, scale: 4.0, channels: GuideChannels::Latent }.forward(&x, &t, &y).unwrap();
    let official = d.t("forward", "cfg.out");
    let diff = (&all - &official).unwrap().abs().unwrap();
    let max_in = |lo: usize, n: usize| diff.narrow(1, lo, n).unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max_in(0, 3) < 1e-4 && max_in(8, 8) < 1e-4, "{} {}", max_in(0, 3), max_in(8, 8));
    assert!(max_in(3, 5) > 1e-2, "channels 3..7 must be guided now");
}

#[test]
fn d1_schedule_and_respacing() {
    let Some(d) = D1::open() else { return };
    let tolerance = |name: &str| match d.tol.get(name) {
        gen_tests::OutputTol::Abs { rtol, .. } => rtol,
        other => panic!("{name}: {other:?}"),
    };
    let betas = linear_betas(1000);
    let lin = Tensor::new(betas.as_slice(), &device()).unwrap();
    assert_close(
        "sched.linear_betas",
        &lin,
        &d.t("schedule", "sched.linear_betas"),
        0.0,
        tolerance("sched.linear_betas"),
    );
    for (prefix, spec) in [("sched", ""), ("sp10", "10")] {
        let keep = space_timesteps(1000, spec).unwrap();
        let (s, map) = Schedule::respaced(&betas, &keep);
        let arrays: [(&str, &Vec<f64>); 13] = [
            ("betas", &s.betas),
            ("alphas_cumprod", &s.alphas_cumprod),
            ("alphas_cumprod_prev", &s.alphas_cumprod_prev),
            ("alphas_cumprod_next", &s.alphas_cumprod_next),
            ("sqrt_alphas_cumprod", &s.sqrt_alphas_cumprod),
            ("sqrt_one_minus_alphas_cumprod", &s.sqrt_one_minus_alphas_cumprod),
            ("log_one_minus_alphas_cumprod", &s.log_one_minus_alphas_cumprod),
            ("sqrt_recip_alphas_cumprod", &s.sqrt_recip_alphas_cumprod),
            ("sqrt_recipm1_alphas_cumprod", &s.sqrt_recipm1_alphas_cumprod),
            ("posterior_variance", &s.posterior_variance),
            ("posterior_log_variance_clipped", &s.posterior_log_variance_clipped),
            ("posterior_mean_coef1", &s.posterior_mean_coef1),
            ("posterior_mean_coef2", &s.posterior_mean_coef2),
        ];
        for (name, v) in arrays {
            let key = format!("{prefix}.{name}");
            let got = Tensor::new(v.as_slice(), &device()).unwrap();
            assert_close(&key, &got, &d.t("schedule", &key), 0.0, tolerance(&key));
        }
        let map: Vec<i64> = map.iter().map(|&i| i as i64).collect();
        d.check(&format!("{prefix}.timestep_map"), &Tensor::new(map.as_slice(), &device()).unwrap());
    }
    for n in [25, 50, 100, 250] {
        let steps: Vec<i64> = space_timesteps(1000, &n.to_string()).unwrap().iter().map(|&i| i as i64).collect();
        d.check(&format!("tmap.{n}"), &Tensor::new(steps.as_slice(), &device()).unwrap());
    }
}

#[test]
fn d1_q_sample_mean_variance_and_losses() {
    let Some(d) = D1::open() else { return };
    let diff = GaussianDiffusion::dit("", true).unwrap();
    let t = steps_of(&d.t("diffusion", "q.t")).unwrap();
    d.check("q.xt", &diff.q_sample(&d.t("diffusion", "q.x0"), &t, &d.t("diffusion", "q.noise")).unwrap());

    for (case, clip) in [("a", false), ("b", true)] {
        let x = d.t("diffusion", &format!("pmv.{case}.x"));
        let t = steps_of(&d.t("diffusion", &format!("pmv.{case}.t"))).unwrap();
        let y = d.t("diffusion", &format!("pmv.{case}.y"));
        let out = d.model.forward(&x, &diff.model_timesteps(&t, &device()).unwrap(), &y).unwrap();
        let mv = diff.p_mean_variance(&out, &x, &t, clip).unwrap();
        d.check(&format!("pmv.{case}.mean"), &mv.mean);
        d.check(&format!("pmv.{case}.variance"), &mv.variance);
        d.check(&format!("pmv.{case}.log_variance"), &mv.log_variance);
        d.check(&format!("pmv.{case}.pred_xstart"), &mv.pred_xstart);
    }

    let (x0, noise) = (d.t("diffusion", "loss.x0"), d.t("diffusion", "loss.noise"));
    let t = steps_of(&d.t("diffusion", "loss.t")).unwrap();
    let y: Vec<u32> = steps_of(&d.t("diffusion", "loss.y")).unwrap().iter().map(|&v| v as u32).collect();
    let u: Vec<f64> = d.t("diffusion", "loss.drop_u").to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    // eval mode: labels as given; train mode: the replayed token_drop (u < 0.1 → null class 10)
    let dropped = drop_labels(&y, &u, 0.1, 10);
    assert_eq!(dropped, vec![10, 4, 10, 10]);
    for (prefix, labels) in [("loss", y), ("loss_train", dropped)] {
        let xt = diff.q_sample(&x0, &t, &noise).unwrap();
        let yt = Tensor::new(labels.as_slice(), &device()).unwrap();
        let out = d.model.forward(&xt, &diff.model_timesteps(&t, &device()).unwrap(), &yt).unwrap();
        let l = diff.training_losses(&out, &x0, &xt, &t, &noise).unwrap();
        d.check(&format!("{prefix}.mse"), &l.mse);
        d.check(&format!("{prefix}.vb"), l.vb.as_ref().unwrap());
        d.check(&format!("{prefix}.loss"), &l.loss);
    }
}

#[test]
fn d1_single_ddpm_and_ddim_steps() {
    let Some(d) = D1::open() else { return };
    let diff = GaussianDiffusion::dit("10", true).unwrap();
    let (x, y) = (d.t("sampling", "step.x"), d.t("sampling", "step.y"));
    let t = steps_of(&d.t("sampling", "step.t")).unwrap();
    let out = d.model.forward(&x, &diff.model_timesteps(&t, &device()).unwrap(), &y).unwrap();
    let mv = diff.p_mean_variance(&out, &x, &t, false).unwrap();
    d.check("step.p.pred_xstart", &mv.pred_xstart);
    d.check("step.p.sample", &diff.p_sample(&mv, &t, &d.t("sampling", "step.p_noise")).unwrap());
    d.check("step.ddim1.pred_xstart", &mv.pred_xstart);
    d.check("step.ddim1.sample", &diff.ddim_sample(&mv, &x, &t, 1.0, &d.t("sampling", "step.ddim1_noise")).unwrap());
}

#[test]
fn d1_ddpm_and_ddim_trajectories_with_guidance() {
    let Some(d) = D1::open() else { return };
    let diff = GaussianDiffusion::dit("10", true).unwrap();
    let (z, y) = (d.t("sampling", "smp.z"), d.t("sampling", "smp.y"));
    let guided = Guided { model: &d.model, scale: 4.0, channels: GuideChannels::OFFICIAL };
    let runs: [(&str, GaussianSampler); 2] =
        [("ddim", GaussianSampler::Ddim { eta: 0.0 }), ("ddpm", GaussianSampler::Ddpm)];
    for (name, sampler) in runs {
        let (mut xs, mut preds) = (vec![z.clone()], Vec::new());
        let mut replay;
        let mut zeros = ZeroNoise;
        let noise: &mut dyn gen_diffusion::Noise = if name == "ddpm" {
            let all = d.t("sampling", "ddpm.noise");
            replay = ReplayNoise::new((0..10).map(|k| all.get(k).unwrap()).collect());
            &mut replay
        } else {
            &mut zeros
        };
        let last = sample_loop(&diff, &guided, z.clone(), &y, sampler, false, noise, &mut |s| {
            xs.push(s.sample.clone());
            preds.push(s.pred_xstart.clone());
            Ok(())
        })
        .unwrap();
        d.check(&format!("{name}.xs"), &Tensor::stack(&xs, 0).unwrap());
        d.check(&format!("{name}.pred_xstart"), &Tensor::stack(&preds, 0).unwrap());
        d.check(&format!("{name}.sample"), &last.narrow(0, 0, 2).unwrap());
    }
}

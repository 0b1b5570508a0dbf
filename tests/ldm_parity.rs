//! Golden parity of LDM-LC against the official `ldm-lc/` (`../shared/golden/ldm`, case l1; its README
//! says how each tensor was made and gives the tolerances): the UNet and every block's activation, live
//! and EMA weights read from the Lightning checkpoint as it is, the schedule buffers, `p_losses`, the DDIM
//! discretisation, one guided η = 1 step, and the whole 10-step guided DDIM trajectories (η 0 and η 1
//! with the sampler's noise replayed).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use gen_diffusion::denoiser::Denoiser;
use gen_diffusion::ldm::ddim::{ddim_sample, ddim_update, guided_eps, DdimSchedule};
use gen_diffusion::ldm::load::{has_ema, ldm_tensors, WeightSet};
use gen_diffusion::ldm::schedule::LdmSchedule;
use gen_diffusion::ldm::{Ldm, LdmConfig, UnetConfig};
use gen_diffusion::load::{read_generator, GeneratorHints};
use gen_diffusion::noise::{ReplayNoise, ZeroNoise};
use gen_diffusion::sampling::Generator;
use gen_diffusion::train::Arch;
use gen_nn::Weights;
use gen_runtime::pth::load_state_dict;
use gen_tests::{assert_close, assert_exact, device, fixture, load, to_f64};

struct L1 {
    root: PathBuf,
    tol: serde_json::Value,
    config: LdmConfig,
}

fn config() -> LdmConfig {
    LdmConfig {
        unet: UnetConfig {
            image_size: 8,
            in_channels: 8,
            out_channels: 8,
            model_channels: 32,
            attention_resolutions: vec![4, 1],
            num_res_blocks: 1,
            channel_mult: vec![1, 1],
            num_head_channels: 16,
            transformer_depth: 1,
            context_dim: 32,
        },
        n_classes: 11,
        linear_start: 0.0015,
        linear_end: 0.0195,
        timesteps: 1000,
    }
}

impl L1 {
    fn open() -> Option<L1> {
        let root = fixture("ldm")?.join("l1");
        let tol = serde_json::from_str(&std::fs::read_to_string(root.join("tolerances.json")).unwrap()).unwrap();
        Some(L1 { root, tol, config: config() })
    }

    fn file(&self, name: &str) -> HashMap<String, Tensor> {
        load(&self.root.join(format!("{name}.safetensors")))
            .into_iter()
            .map(|(k, v)| (k, v.to_device(&device()).unwrap()))
            .collect()
    }

    fn build(&self, tensors: HashMap<String, Tensor>) -> Ldm {
        let w = Weights::new("l1", tensors);
        let m = Ldm::new(w.var_builder(DType::F32, &device()), &self.config).unwrap();
        assert!(w.unused().is_empty(), "weights the model never read: {:?}", w.unused());
        m
    }

    fn checkpoint(&self) -> HashMap<String, Tensor> {
        load_state_dict(&self.root.join("checkpoint.pth"), Some("state_dict")).unwrap()
    }

    fn atol(&self, file: &str, name: &str) -> f64 {
        self.tol["per_tensor"][format!("{file}.safetensors")][name]["atol"]
            .as_f64()
            .unwrap_or_else(|| panic!("{file}:{name}"))
    }

    fn per_step(&self, file: &str, name: &str) -> Vec<f64> {
        let v = &self.tol["per_step"][format!("{file}.safetensors")][name]["atol_per_step"];
        v.as_array().unwrap_or_else(|| panic!("{file}:{name}")).iter().map(|x| x.as_f64().unwrap()).collect()
    }

    fn check(&self, file: &str, name: &str, got: &Tensor, want: &Tensor) {
        assert_close(&format!("{file}.{name}"), got, want, self.atol(file, name), 0.0);
    }

    fn check_steps(&self, file: &str, name: &str, got: &[Tensor], want: &Tensor) {
        let tol = self.per_step(file, name);
        assert_eq!(got.len(), tol.len(), "{file}.{name}: steps");
        for (k, g) in got.iter().enumerate() {
            assert_close(&format!("{file}.{name}[{k}]"), g, &want.get(k).unwrap(), tol[k], 0.0);
        }
    }
}

fn steps(t: &Tensor) -> Vec<usize> {
    to_f64(t).iter().map(|&v| v as usize).collect()
}

#[test]
fn l1_unet_forward_live_and_ema() {
    let Some(l) = L1::open() else { return };
    let f = l.file("forward");
    let live = l.build(l.file("weights"));
    let t = f["t"].to_dtype(DType::F32).unwrap();
    assert_exact("context", &live.context(&f["y"]).unwrap(), &f["context"]);
    let all: Vec<u32> = (0..11).collect();
    assert_close(
        "all_labels_context",
        &live.context(&Tensor::new(all.as_slice(), &device()).unwrap()).unwrap(),
        &f["all_labels_context"],
        0.0,
        0.0,
    );
    let mut trace = HashMap::new();
    let out = live.unet.forward_traced(&f["x"], &t, &f["context"], Some(&mut trace)).unwrap();
    l.check("forward", "out", &out, &f["out"]);
    let acts: Vec<&String> = f.keys().filter(|k| k.starts_with("act.")).collect();
    assert_eq!(acts.len(), 17);
    for name in acts {
        l.check("forward", name, trace.get(name).unwrap_or_else(|| panic!("no {name} in the trace")), &f[name]);
    }
    // the Lightning checkpoint as it is: its live UNet is the same, its EMA UNet gives out_ema
    let sd = l.checkpoint();
    assert!(has_ema(&sd));
    assert_eq!(to_f64(&sd["model_ema.num_updates"]), vec![3.0]);
    let from_ckpt = l.build(ldm_tensors(&sd, WeightSet::Live).unwrap());
    l.check("forward", "out", &from_ckpt.forward(&f["x"], &t, &f["y"]).unwrap(), &f["out"]);
    let ema = l.build(ldm_tensors(&sd, WeightSet::Ema).unwrap());
    l.check("forward", "out_ema", &ema.forward(&f["x"], &t, &f["y"]).unwrap(), &f["out_ema"]);
    // `gen sample --model checkpoint.pth --head-channels 16`: the architecture read off the shapes
    let hints = GeneratorHints { head_channels: Some(16), ..Default::default() };
    let mut gw = read_generator(&l.root.join("checkpoint.pth"), &hints).unwrap();
    let Arch::Ldm(got) = &mut gw.arch else { panic!("read as {:?}", gw.arch) };
    let mut want = l.config.clone();
    (want.unet.image_size, want.unet.attention_resolutions) = (16, vec![1]); // side: not stored; 4: unreached
    assert_eq!(*got, want);
    got.unet.image_size = 8; // l1's latent
    let Generator::Ldm(m) = gw.build(DType::F32, &device()).unwrap() else { panic!("not an LDM") };
    l.check("forward", "out_ema", &m.forward(&f["x"], &t, &f["y"]).unwrap(), &f["out_ema"]);
}

#[test]
fn l1_schedule_and_ddim_discretisation() {
    let Some(l) = L1::open() else { return };
    let want = l.file("schedule");
    let s = LdmSchedule::new(&l.config);
    let sc = &s.schedule;
    let arrays: [(&str, &Vec<f64>); 12] = [
        ("betas", &sc.betas),
        ("alphas_cumprod", &sc.alphas_cumprod),
        ("alphas_cumprod_prev", &sc.alphas_cumprod_prev),
        ("sqrt_alphas_cumprod", &sc.sqrt_alphas_cumprod),
        ("sqrt_one_minus_alphas_cumprod", &sc.sqrt_one_minus_alphas_cumprod),
        ("log_one_minus_alphas_cumprod", &sc.log_one_minus_alphas_cumprod),
        ("sqrt_recip_alphas_cumprod", &sc.sqrt_recip_alphas_cumprod),
        ("sqrt_recipm1_alphas_cumprod", &sc.sqrt_recipm1_alphas_cumprod),
        ("posterior_variance", &sc.posterior_variance),
        ("posterior_log_variance_clipped", &sc.posterior_log_variance_clipped),
        ("posterior_mean_coef1", &sc.posterior_mean_coef1),
        ("posterior_mean_coef2", &sc.posterior_mean_coef2),
    ];
    for (name, v) in arrays {
        let got = Tensor::new(v.as_slice(), &device()).unwrap();
        assert_close(&format!("schedule.{name}"), &got, &want[name], 0.0, 1e-12);
        // rounded to f32 they are the official buffers
        let (g32, w32) = (got.to_dtype(DType::F32).unwrap(), want[name].to_dtype(DType::F32).unwrap());
        let ulps = (g32.to_vec1::<f32>().unwrap().iter().zip(w32.to_vec1::<f32>().unwrap()))
            .map(|(a, b)| (a.to_bits() as i64 - b.to_bits() as i64).abs())
            .max()
            .unwrap();
        assert!(ulps <= 1, "schedule.{name}: f32 values {ulps} ulps apart");
    }
    let lvlb = Tensor::new(s.lvlb_weights.as_slice(), &device()).unwrap();
    assert_close("schedule.lvlb_weights", &lvlb, &want["lvlb_weights"], 0.0, 1e-6);

    let d = l.file("ddim_schedule");
    for eta in [0.0, 1.0] {
        let ds = DdimSchedule::new(&s, 10, eta).unwrap();
        let ts: Vec<i64> = ds.timesteps.iter().map(|&t| t as i64).collect();
        assert_exact("ddim_timesteps", &Tensor::new(ts.as_slice(), &device()).unwrap(), &d["ddim_timesteps"]);
        assert_close(
            "ddim_alphas",
            &Tensor::new(ds.alphas.as_slice(), &device()).unwrap(),
            &d["ddim_alphas"],
            0.0,
            0.0,
        );
        assert_close(
            "ddim_alphas_prev",
            &Tensor::new(ds.alphas_prev.as_slice(), &device()).unwrap(),
            &d["ddim_alphas_prev"],
            0.0,
            0.0,
        );
        let s1m = Tensor::new(ds.sqrt_one_minus_alphas.as_slice(), &device()).unwrap();
        assert_close("ddim_sqrt_one_minus_alphas", &s1m, &d["ddim_sqrt_one_minus_alphas"], 0.0, 0.0);
        let key = if eta == 0.0 { "ddim_sigmas_eta0" } else { "ddim_sigmas_eta1" };
        assert_close(key, &Tensor::new(ds.sigmas.as_slice(), &device()).unwrap(), &d[key], 0.0, 0.0);
    }
    // 200 steps (the official evaluation): 1, 6, …, 996
    let ds = DdimSchedule::new(&s, 200, 1.0).unwrap();
    assert_eq!((ds.len(), ds.timesteps[0], ds.timesteps[1], ds.timesteps[199]), (200, 1, 6, 996));
    assert!(DdimSchedule::new(&s, 0, 0.0).unwrap_err().to_string().contains("0 steps"));
    assert!(DdimSchedule::new(&s, 1001, 0.0).unwrap_err().to_string().contains("1001 steps"));
}

#[test]
fn l1_training_loss() {
    let Some(l) = L1::open() else { return };
    let f = l.file("loss");
    let model = l.build(l.file("weights"));
    let s = LdmSchedule::new(&l.config);
    let t = steps(&f["t"]);
    let x_noisy = s.q_sample(&f["x_start"], &t, &f["noise"]).unwrap();
    l.check("loss", "x_noisy", &x_noisy, &f["x_noisy"]);
    let out = model.forward(&x_noisy, &f["t"].to_dtype(DType::F32).unwrap(), &f["y"]).unwrap();
    l.check("loss", "model_output", &out, &f["model_output"]);
    let per = s.loss_per_sample(&out, &f["noise"]).unwrap();
    l.check("loss", "loss_simple_per_sample", &per, &f["loss_simple_per_sample"]);
    l.check("loss", "loss_simple", &per.mean_all().unwrap(), &f["loss_simple"]);
    l.check("loss", "loss", &per.mean_all().unwrap(), &f["loss"]);
    l.check("loss", "loss_vlb", &s.loss_vlb(&per, &t).unwrap(), &f["loss_vlb"]);
    let w: Vec<f32> = t.iter().map(|&i| s.lvlb_weights[i]).collect();
    assert_close("lvlb_weights_t", &Tensor::new(w.as_slice(), &device()).unwrap(), &f["lvlb_weights_t"], 0.0, 1e-6);
}

#[test]
fn l1_guided_ddim_step_and_trajectories() {
    let Some(l) = L1::open() else { return };
    let sd = l.checkpoint();
    let ema = l.build(ldm_tensors(&sd, WeightSet::Ema).unwrap());
    let s = LdmSchedule::new(&l.config);

    // one η = 1 step (tolerances from the README's table: this file is not in tolerances.json)
    let f = l.file("ddim_eta1_step");
    let d = DdimSchedule::new(&s, 10, 1.0).unwrap();
    let index = to_f64(&f["index"])[0] as usize;
    assert_eq!(d.timesteps[index], 401);
    let t = f["t"].to_dtype(DType::F32).unwrap();
    let (parts, eps) = guided_eps(&ema, &f["x"], &t, &f["y"], 1.6).unwrap();
    let (u, c) = parts.unwrap();
    assert_close("step.eps_uncond", &u, &f["eps_uncond"], 5e-5, 0.0);
    assert_close("step.eps_cond", &c, &f["eps_cond"], 6e-5, 0.0);
    assert_close("step.eps", &eps, &f["eps"], 2e-4, 0.0);
    let (x_prev, pred_x0) = ddim_update(&d, index, &f["x"], &eps, &f["noise"]).unwrap();
    assert_close("step.pred_x0", &pred_x0, &f["pred_x0"], 2e-4, 0.0);
    assert_close("step.x_prev", &x_prev, &f["x_prev"], 6e-5, 0.0);
    for (name, v) in
        [("a_t", f64::from(d.alphas[index])), ("a_prev", d.alphas_prev[index]), ("sigma_t", d.sigmas[index])]
    {
        assert_eq!(v as f32, to_f64(&f[name])[0] as f32, "{name}");
    }

    for (file, eta) in [("ddim_cfg_eta0", 0.0), ("ddim_cfg_eta1", 1.0)] {
        let f = l.file(file);
        let d = DdimSchedule::new(&s, 10, eta).unwrap();
        let order: Vec<i64> = d.timesteps.iter().rev().map(|&t| t as i64).collect();
        assert_exact("timesteps", &Tensor::new(order.as_slice(), &device()).unwrap(), &f["timesteps"]);
        let (mut xs, mut preds, mut eps, mut eu, mut ec) = (vec![f["x_T"].clone()], vec![], vec![], vec![], vec![]);
        let mut replay;
        let mut zeros = ZeroNoise;
        let noise: &mut dyn gen_diffusion::Noise = if eta > 0.0 {
            replay = ReplayNoise::new((0..10).map(|k| f["sampler_noise"].get(k).unwrap()).collect());
            &mut replay
        } else {
            &mut zeros
        };
        let last = ddim_sample(&ema, &d, f["x_T"].clone(), &f["y"], 1.6, noise, &mut |st| {
            xs.push(st.sample.clone());
            preds.push(st.pred_x0.clone());
            eps.push(st.eps.clone());
            if let Some((u, c)) = st.eps_parts {
                eu.push(u.clone());
                ec.push(c.clone());
            }
            Ok(())
        })
        .unwrap();
        l.check_steps(file, "x_inter", &xs, &f["x_inter"]);
        l.check_steps(file, "pred_x0", &preds, &f["pred_x0"]);
        l.check_steps(file, "eps", &eps, &f["eps"]);
        if eta == 0.0 {
            l.check_steps(file, "eps_uncond", &eu, &f["eps_uncond"]);
            l.check_steps(file, "eps_cond", &ec, &f["eps_cond"]);
        }
        l.check(file, "samples", &last, &f["samples"]);
    }
}

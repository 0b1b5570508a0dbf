//! Golden parity of SiT-LC against the official `sit-lc/models.py` and `transport/` with torchdiffeq
//! 0.2.5 (`../shared/golden/sit`, case s1; its README says how each tensor was made and sizes the
//! tolerances): the network, guidance, the three paths, the training losses of every path × prediction ×
//! weight, the ODE drift and score, the Euler / Heun / dopri5 ODE samplers (dopri5 free-running and
//! replayed step by step) and the Euler–Maruyama SDE sampler replayed from the saved noise.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use gen_diffusion::denoiser::{Denoiser, GuideChannels, Guided};
use gen_diffusion::dit::DitTrace;
use gen_diffusion::embed::drop_labels;
use gen_diffusion::noise::ReplayNoise;
use gen_diffusion::sit::Sit;
use gen_diffusion::transport::ode::{
    dopri5_step, error_ratio, interp_eval, interp_fit, next_step_size, prev_f32, Dopri5Options,
};
use gen_diffusion::transport::sample::{sample_ode, sample_sde, OdeMethod, SdeOptions};
use gen_diffusion::transport::sde::LastStep;
use gen_diffusion::transport::{DiffusionForm, LossWeight, PathKind, Prediction, Transport};
use gen_nn::Weights;
use gen_tests::{assert_close, assert_exact, device, fixture, load, to_f64, OutputTolerances};

const PATHS: [(&str, PathKind); 3] = [("Linear", PathKind::Linear), ("GVP", PathKind::Gvp), ("VP", PathKind::Vp)];
const PREDICTIONS: [(&str, Prediction); 3] =
    [("velocity", Prediction::Velocity), ("score", Prediction::Score), ("noise", Prediction::Noise)];

struct S1 {
    tol: OutputTolerances,
    model: Sit,
    files: HashMap<String, HashMap<String, Tensor>>,
}

impl S1 {
    fn open() -> Option<S1> {
        let root = fixture("sit")?;
        let config = gen_tests::golden_tiny_dit();
        let w = Weights::new("s1", load(&root.join("s1/weights.safetensors")));
        let model = Sit::new(w.var_builder(DType::F32, &device()), &config).unwrap();
        assert!(w.unused().is_empty(), "weights the model never read: {:?}", w.unused());
        let files = ["forward", "paths", "losses", "transport_fns", "samplers"]
            .iter()
            .map(|f| (f.to_string(), load(&root.join(format!("s1/{f}.safetensors")))))
            .collect();
        Some(S1 { tol: OutputTolerances::open(&root), model, files })
    }

    fn t(&self, name: &str) -> Tensor {
        let f = self.files.values().find(|f| f.contains_key(name)).unwrap_or_else(|| panic!("no tensor {name}"));
        f[name].to_device(&device()).unwrap()
    }

    fn has(&self, name: &str) -> bool {
        self.files.values().any(|f| f.contains_key(name))
    }

    fn check(&self, name: &str, got: &Tensor) {
        self.tol.check(name, got, &self.t(name));
    }

    fn times(&self, name: &str) -> Vec<f64> {
        to_f64(&self.t(name))
    }
}

fn f32_times(t: &[f64]) -> Tensor {
    Tensor::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), &device()).unwrap()
}

fn per_row(v: &[f64], like: &Tensor) -> Tensor {
    let mut shape = vec![v.len()];
    shape.resize(like.rank(), 1);
    Tensor::from_vec(v.iter().map(|&a| a as f32).collect::<Vec<_>>(), shape, &device()).unwrap()
}

#[test]
fn s1_forward_and_guidance() {
    let Some(s) = S1::open() else { return };
    let (x, t, y) = (s.t("fwd.x"), s.t("fwd.t"), s.t("fwd.y"));
    let mut trace = DitTrace::default();
    let full = s.model.net.forward_traced(&x, &t, &y, Some(&mut trace)).unwrap();
    s.check("fwd.out_full", &full);
    s.check("fwd.out", &s.model.forward(&x, &t, &y).unwrap());
    s.check("fwd.x_embed", trace.x_tokens.as_ref().unwrap());
    s.check("fwd.t_emb", trace.t_emb.as_ref().unwrap());
    s.check("fwd.y_emb", trace.y_emb.as_ref().unwrap());
    s.check("fwd.block0", &trace.blocks[0]);
    s.check("fwd.block1", &trace.blocks[1]);
    s.check("fwd.final", trace.final_tokens.as_ref().unwrap());
    let g = Guided { model: &s.model, scale: 4.0, channels: GuideChannels::OFFICIAL };
    s.check("cfg.out", &g.forward(&s.t("cfg.x"), &s.t("cfg.t"), &s.t("cfg.y")).unwrap());
}

#[test]
fn s1_paths() {
    let Some(s) = S1::open() else { return };
    let t = s.times("path.t");
    let (x, v, x0, x1) = (s.t("path.x"), s.t("path.v"), s.t("path.x0"), s.t("path.x1"));
    for (name, path) in PATHS {
        let scalar = |f: &dyn Fn(f64) -> f64| {
            Tensor::new(t.iter().map(|&t| f(t) as f32).collect::<Vec<_>>().as_slice(), &device()).unwrap()
        };
        s.check(&format!("path.{name}.alpha_t"), &scalar(&|t| path.alpha(t).0));
        s.check(&format!("path.{name}.d_alpha_t"), &scalar(&|t| path.alpha(t).1));
        s.check(&format!("path.{name}.sigma_t"), &scalar(&|t| path.sigma(t).0));
        s.check(&format!("path.{name}.d_sigma_t"), &scalar(&|t| path.sigma(t).1));
        s.check(&format!("path.{name}.d_alpha_alpha_ratio_t"), &scalar(&|t| path.d_alpha_alpha_ratio(t)));
        s.check(&format!("path.{name}.drift_var"), &scalar(&|t| path.drift(t).1));
        let c: Vec<f64> = t.iter().map(|&t| path.drift(t).0).collect();
        let drift_mean = x.broadcast_mul(&per_row(&c, &x)).unwrap();
        s.check(&format!("path.{name}.drift_mean"), &drift_mean);
        for (form_name, form) in [
            ("constant", DiffusionForm::Constant),
            ("SBDM", DiffusionForm::Sbdm),
            ("sigma", DiffusionForm::Sigma),
            ("linear", DiffusionForm::Linear),
            ("decreasing", DiffusionForm::Decreasing),
            ("inccreasing-decreasing", DiffusionForm::IncreasingDecreasing),
        ] {
            for (suffix, norm) in [("n1", 1.0), ("n07", 0.7)] {
                s.check(
                    &format!("path.{name}.diffusion.{form_name}.{suffix}"),
                    &scalar(&|t| path.diffusion(t, form, norm)),
                );
            }
        }
        let transport = |p| Transport::new(path, p, LossWeight::None, None, Some(1e-3));
        s.check(
            &format!("path.{name}.score_from_velocity"),
            &transport(Prediction::Velocity).score(&v, &x, &t).unwrap(),
        );
        let (a, b): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| path.noise_from_velocity(t)).unzip();
        let noise = (v.broadcast_mul(&per_row(&a, &x)).unwrap() - &x).unwrap().broadcast_div(&per_row(&b, &x)).unwrap();
        s.check(&format!("path.{name}.noise_from_velocity"), &noise);
        // a score network's ODE drift is the velocity
        s.check(&format!("path.{name}.velocity_from_score"), &transport(Prediction::Score).drift(&v, &x, &t).unwrap());
        let tr = transport(Prediction::Velocity);
        let (xt, ut) = tr.plan(&t, &x0, &x1).unwrap();
        s.check(&format!("path.{name}.mu_t"), &xt);
        s.check(&format!("path.{name}.xt"), &xt);
        s.check(&format!("path.{name}.ut"), &ut);
    }
}

#[test]
fn s1_training_losses() {
    let Some(s) = S1::open() else { return };
    let (x1, x0) = (s.t("loss.x1"), s.t("loss.x0"));
    let u = s.times("loss.u");
    let y: Vec<u32> = to_f64(&s.t("loss.y")).iter().map(|&v| v as u32).collect();
    let drop_u = s.times("loss.drop_u");
    let y = Tensor::new(drop_labels(&y, &drop_u, 0.1, 10).as_slice(), &device()).unwrap();
    for (pname, path) in PATHS {
        for (qname, pred) in PREDICTIONS {
            let base = format!("loss.{pname}.{qname}");
            let weights: &[(&str, LossWeight)] = if pred == Prediction::Velocity {
                &[("none", LossWeight::None)]
            } else {
                &[
                    ("none", LossWeight::None),
                    ("velocity", LossWeight::Velocity),
                    ("likelihood", LossWeight::Likelihood),
                ]
            };
            for &(wname, weight) in weights {
                let tr = Transport::new(path, pred, weight, None, None);
                let t = tr.train_times(&u);
                s.check(&format!("{base}.t"), &f32_times(&t));
                let (xt, ut) = tr.plan(&t, &x0, &x1).unwrap();
                s.check(&format!("{base}.xt"), &xt);
                s.check(&format!("{base}.ut"), &ut);
                let out = s.model.forward(&xt, &f32_times(&t), &y).unwrap();
                s.check(&format!("{base}.pred"), &out);
                s.check(&format!("{base}.{wname}"), &tr.loss(&out, &t, &x0, &ut).unwrap());
            }
        }
    }
}

#[test]
fn s1_drift_and_score_of_each_prediction() {
    let Some(s) = S1::open() else { return };
    let (x, y) = (s.t("fn.x"), s.t("fn.y"));
    let t = s.times("fn.t");
    let out = s.model.forward(&x, &f32_times(&t), &y).unwrap();
    for (pname, path) in PATHS {
        for (qname, pred) in PREDICTIONS {
            let tr = Transport::new(path, pred, LossWeight::None, None, Some(1e-3));
            s.check(&format!("fn.{pname}.{qname}.drift"), &tr.drift(&out, &x, &t).unwrap());
            s.check(&format!("fn.{pname}.{qname}.score"), &tr.score(&out, &x, &t).unwrap());
        }
    }
}

#[test]
fn s1_fixed_step_ode_and_sde_samplers() {
    let Some(s) = S1::open() else { return };
    let (z, y) = (s.t("smp.z"), s.t("smp.y"));
    let g = Guided { model: &s.model, scale: 4.0, channels: GuideChannels::OFFICIAL };
    let official = Transport::official();
    for (name, method) in [("euler", OdeMethod::Euler), ("heun2", OdeMethod::Heun2)] {
        let (states, _) = sample_ode(&official, &g, &z, &y, method, 10, &mut |_| Ok(())).unwrap();
        s.check(&format!("ode.{name}.traj"), &Tensor::stack(&states, 0).unwrap());
    }
    let noise_all = s.t("smp.sde_noise");
    let replay = || ReplayNoise::new((0..9).map(|k| noise_all.get(k).unwrap()).collect());
    let sde = SdeOptions { form: DiffusionForm::Sigma, norm: 1.0, last: LastStep::Mean(0.04) };
    let states = sample_sde(&official, &g, &z, &y, sde, 10, &mut replay(), &mut |_| Ok(())).unwrap();
    s.check("sde.Linear.velocity.sigma.traj", &Tensor::stack(&states, 0).unwrap());
    let mut checked = 0;
    for (pname, path) in PATHS {
        for (qname, pred) in PREDICTIONS {
            let tr = Transport::new(path, pred, LossWeight::None, None, Some(1e-3));
            let key = format!("ode.euler.{pname}.{qname}.final");
            if s.has(&key) {
                let (states, _) = sample_ode(&tr, &g, &z, &y, OdeMethod::Euler, 10, &mut |_| Ok(())).unwrap();
                s.check(&key, states.last().unwrap());
                checked += 1;
            }
            let forms: &[(&str, DiffusionForm)] = &[("sigma", DiffusionForm::Sigma), ("SBDM", DiffusionForm::Sbdm)];
            for &(fname, form) in forms {
                let key = format!("sde.{pname}.{qname}.{fname}.final");
                if s.has(&key) {
                    let o = SdeOptions { form, ..sde };
                    let states = sample_sde(&tr, &g, &z, &y, o, 10, &mut replay(), &mut |_| Ok(())).unwrap();
                    s.check(&key, states.last().unwrap());
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 17, "every other-transport final in the fixture");
}

#[test]
fn s1_dopri5_free_running_and_replayed() {
    let Some(s) = S1::open() else { return };
    let (z, y) = (s.t("smp.z"), s.t("smp.y"));
    let g = Guided { model: &s.model, scale: 4.0, channels: GuideChannels::OFFICIAL };
    let tr = Transport::official();
    let o = Dopri5Options::default();
    // free-running: our own step control takes the same 4 accepted steps
    let (states, report) = sample_ode(&tr, &g, &z, &y, OdeMethod::Dopri5(o), 10, &mut |_| Ok(())).unwrap();
    let report = report.unwrap();
    s.check("ode.dopri5.traj", &Tensor::stack(&states, 0).unwrap());
    assert_exact(
        "ode.dopri5.nfe",
        &Tensor::new(&[report.eval_t.len() as i64], &device()).unwrap(),
        &s.t("ode.dopri5.nfe"),
    );
    s.check("ode.dopri5.eval_t", &f32_times(&report.eval_t));
    let col = |f: &dyn Fn(&gen_diffusion::transport::ode::StepRecord) -> f64| {
        Tensor::new(report.steps.iter().map(f).collect::<Vec<f64>>().as_slice(), &device()).unwrap()
    };
    s.check("ode.dopri5.step_t0", &col(&|r| r.t0));
    s.check("ode.dopri5.step_dt", &col(&|r| r.dt));
    let accepted: Vec<i64> = report.steps.iter().map(|r| i64::from(r.accepted)).collect();
    assert_exact(
        "ode.dopri5.step_accepted",
        &Tensor::new(accepted.as_slice(), &device()).unwrap(),
        &s.t("ode.dopri5.step_accepted"),
    );

    // replay: each official step from its saved state, time and size
    let b = z.dim(0).unwrap();
    let mut drift = |t: f64, x: &Tensor| {
        let out = g.forward(x, &Tensor::full(t as f32, b, &device()).unwrap(), &y)?;
        tr.drift(&out, x, &vec![t; b])
    };
    let (t0s, dts) = (s.times("ode.dopri5.step_t0"), s.times("ode.dopri5.step_dt"));
    let (ratios, dt_next) = (s.times("ode.dopri5.step_error_ratio"), s.times("ode.dopri5.step_dt_next"));
    let (y0s, y1s) = (s.t("ode.dopri5.step_y0"), s.t("ode.dopri5.step_y1"));
    let mut pieces = Vec::new();
    for i in 0..t0s.len() {
        let y0 = y0s.get(i).unwrap();
        // FSAL: step i ≥ 1 starts from the derivative 1 ulp before its start time
        let tf = if i == 0 { t0s[0] } else { f64::from(prev_f32(t0s[i] as f32)) };
        let f0 = drift(tf, &y0).unwrap();
        let step = dopri5_step(&mut drift, &y0, &f0, t0s[i], dts[i], &mut Vec::new()).unwrap();
        assert_close(&format!("ode.dopri5.step_y1[{i}]"), &step.y1, &y1s.get(i).unwrap(), 1e-4, 0.0);
        let ratio = error_ratio(&step.error, &y0, &step.y1, o.atol, o.rtol).unwrap();
        if ratios[i] > 1e-2 {
            assert!((ratio - ratios[i]).abs() <= 0.05 * ratios[i], "step {i}: error ratio {ratio} vs {}", ratios[i]);
        }
        let next = next_step_size(dts[i], ratios[i]);
        assert!((next - dt_next[i]).abs() <= 1e-9 * dt_next[i], "step {i}: dt_next {next} vs {}", dt_next[i]);
        pieces.push((interp_fit(&y0, &step.y1, &step.k, dts[i] as f32).unwrap(), t0s[i], t0s[i] + dts[i]));
    }
    // the dense output at the 10 output times from the replayed steps
    let times: Vec<f64> =
        gen_diffusion::transport::ode::linspace_f32(0.0, 1.0, 10).into_iter().map(f64::from).collect();
    let mut traj = vec![z.clone()];
    for &t in &times[1..] {
        let (coef, a, b) = pieces.iter().find(|(_, a, b)| t > *a && t <= *b).expect("a step covers t");
        traj.push(interp_eval(coef, *a, *b, t).unwrap());
    }
    assert_close("ode.dopri5.traj (replayed)", &Tensor::stack(&traj, 0).unwrap(), &s.t("ode.dopri5.traj"), 1e-4, 0.0);
}

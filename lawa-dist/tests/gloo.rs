//! Two ranks as two threads of this process, joined on loopback through Gloo: each collective
//! against values computed by hand.

use std::time::Duration;

use lawa_dist::{
    ensure_identical, Backend, GradientReducer, Launch, ProcessGroup, ReduceOp, ReducePrecision,
};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn launch(rank: usize, world_size: usize, port: u16) -> Launch {
    Launch {
        rank,
        world_size,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        timeout: Duration::from_secs(60),
        interface: None,
        restart: 0,
    }
}

/// Held by each test while it has process groups: one group at a time in this process. Tests
/// run in parallel threads, and each finds its store's port by binding port 0 and letting it
/// go; a port one test let go can be the next one another test (or Gloo's own connections)
/// gets. Ranks of two tests joined through one store are the likely cause of the segfault this
/// binary showed about one run in 25 with its tests in parallel (none in 45 runs of one test).
fn one_group_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `body(group)` on ranks 0..world of a fresh Gloo group, one thread each; returns their
/// results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    body: impl Fn(ProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let _alone = one_group_at_a_time();
    let port = free_port();
    let threads: Vec<_> = (0..world)
        .map(|rank| {
            let body = body.clone();
            std::thread::spawn(move || {
                let group = ProcessGroup::join(Backend::Gloo, &launch(rank, world, port))
                    .expect("joins the group");
                body(group)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("rank thread"))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape(-1)).expect("f32 values")
}

#[test]
fn backends_built_here() {
    assert!(
        Backend::Gloo.is_built(),
        "run scripts/bootstrap.sh, then rebuild"
    );
    println!("NCCL built: {}", Backend::Nccl.is_built());
}

#[test]
fn all_reduce_broadcast_and_barrier_by_hand() {
    let out = on_ranks(2, |g| {
        let r = g.rank() as f32;
        let a = Tensor::from_slice(&[1.0 + r, 10.0 * r, -r]);
        let b = Tensor::from_slice(&[r, 2.0]);
        g.all_reduce(&[&a, &b], ReduceOp::Sum).unwrap();
        let hi = Tensor::from_slice(&[r, 5.0 - r]);
        let lo = hi.copy();
        g.all_reduce(&[&hi], ReduceOp::Max).unwrap();
        g.all_reduce(&[&lo], ReduceOp::Min).unwrap();
        let c = Tensor::from_slice(&[7.0 + r, 8.0 + r]);
        g.broadcast(&[&c], 1).unwrap();
        g.barrier().unwrap();
        (values(&a), values(&b), values(&hi), values(&lo), values(&c))
    });
    for (a, b, hi, lo, c) in out {
        assert_eq!(a, [3.0, 10.0, -1.0]);
        assert_eq!(b, [1.0, 4.0]);
        assert_eq!(hi, [1.0, 5.0]);
        assert_eq!(lo, [0.0, 4.0]);
        assert_eq!(c, [8.0, 9.0]);
    }
}

/// A linear model's gradients on each rank's half of a batch, averaged, equal the gradient of
/// the whole batch in one process (to float rounding).
#[test]
fn averaged_gradients_equal_the_whole_batch() {
    let data = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
    let weight = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
    let bias = Tensor::randn([3], (Kind::Float, Device::Cpu));
    fn loss_of(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        (x.matmul(&w.tr()) + b).tanh().mean(Kind::Float)
    }
    let (w1, b1) = (
        weight.copy().set_requires_grad(true),
        bias.copy().set_requires_grad(true),
    );
    let whole = loss_of(&data, &w1, &b1);
    whole.backward();
    let want = [
        values(&w1.grad()),
        values(&b1.grad()),
        vec![whole.double_value(&[]) as f32],
    ];
    let (data, weight, bias) = (values(&data), values(&weight), values(&bias));
    for precision in [ReducePrecision::Gradient, ReducePrecision::Float32] {
        let (data, weight, bias) = (data.clone(), weight.clone(), bias.clone());
        let got = on_ranks(2, move |g| {
            let w = Tensor::from_slice(&weight)
                .view([3, 5])
                .set_requires_grad(true);
            let b = Tensor::from_slice(&bias).set_requires_grad(true);
            let half = Tensor::from_slice(&data)
                .view([8, 5])
                .narrow(0, 4 * g.rank() as i64, 4);
            let loss = loss_of(&half, &w, &b);
            loss.backward();
            // Buckets of 16 bytes: the weight alone, the bias alone.
            let reducer =
                GradientReducer::new(&[w.shallow_clone(), b.shallow_clone()], 16, precision);
            assert_eq!(reducer.buckets(), 2);
            let loss = loss.detach();
            reducer.average(&g, &[&loss]).unwrap();
            [values(&w.grad()), values(&b.grad()), values(&loss)]
        });
        for rank in got {
            for (g, w) in rank.iter().zip(&want) {
                for (x, y) in g.iter().zip(w) {
                    assert!((x - y).abs() < 1e-6, "{precision:?}: {g:?} vs {w:?}");
                }
            }
        }
    }
}

#[test]
fn differing_weights_are_caught_on_every_rank() {
    let out = on_ranks(2, |g| {
        let same = Tensor::from_slice(&[1.0f32, 2.0]);
        let differs = Tensor::from_slice(&[1.0f32, 2.0 + g.rank() as f32 * 1e-6]);
        let ok = ensure_identical(&g, &[same.shallow_clone()], "weights");
        let bad = ensure_identical(&g, &[same, differs], "weights");
        (ok.is_ok(), bad.map_err(|e| e.to_string()))
    });
    for (ok, bad) in out {
        assert!(ok);
        let e = bad.unwrap_err();
        assert!(e.contains("weights: tensor 1 differs between ranks"), "{e}");
    }
}

/// A rank that leaves makes the other's next collective fail with a message, not hang.
#[test]
fn a_rank_that_leaves_ends_the_others_collective() {
    let out = on_ranks(2, |g| {
        g.barrier().unwrap();
        if g.rank() == 1 {
            drop(g);
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
        let t = Tensor::from_slice(&[1.0f32]);
        Some(
            g.all_reduce(&[&t], ReduceOp::Sum)
                .map_err(|e| e.to_string()),
        )
    });
    let e = out[0].clone().unwrap().unwrap_err();
    assert!(e.starts_with("all-reduce failed on rank 0"), "{e}");
}

#[test]
fn a_missing_rank_times_out_with_a_message() {
    let _alone = one_group_at_a_time();
    let mut l = launch(0, 2, free_port());
    l.timeout = Duration::from_secs(2);
    let e = ProcessGroup::join(Backend::Gloo, &l)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot join the process group as rank 0 of 2 at 127.0.0.1:"),
        "{e}"
    );
}

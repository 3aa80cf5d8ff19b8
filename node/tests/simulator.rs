//! The multi-node simulator (tests/sim) run as tests: seeded random walks over the pure replication core,
//! every invariant (tests/sim/check.rs) checked after each step; hand-written races in `scenarios`.
//!
//! - Replay one walk exactly: `SIM_SEED=<n> cargo test -p node --test simulator` (a failure prints the seed,
//!   the step, the broken invariant, every step with its message, and every node's copies).
//! - `SIM_STEPS=<n>` steps per walk; `SIM_SEEDS=<n>` walks; `SIM_TRACE=1` prints the copies after each step;
//!   `SIM_FAULTS=crashes,losses,cuts,forward,stale,lag` picks the faults; `SIM_SURVEY=1` lists every failing
//!   seed instead of stopping at the first.
//! - The soak and the walks that still break invariants (known findings, each named in its comment) are
//!   `#[ignore]`d: `cargo test -p node --test simulator -- --ignored`.

#[path = "sim/scenarios.rs"]
mod scenarios;
mod sim;

use node::config::ReplicationMode;
use sim::{Config, Faults, Sim, Stats};

/// What the default walks inject: crashes and empty restarts, on top of what every walk has (concurrent
/// writes from several clients, deletes, messages delivered in any order, requests reaching any node).
const CRASHES: Faults = Faults {
    crashes: true,
    ..Faults::NONE
};

/// A walk's shape follows from its seed alone (one in five runs async), so the seed is all a replay needs.
fn config_for(seed: u64, faults: Faults) -> Config {
    Config {
        nodes: 3 + (seed % 3) as usize,
        clients: 1 + (seed / 3 % 3) as usize,
        mode: if seed % 5 == 4 {
            ReplicationMode::Async
        } else {
            ReplicationMode::Sync
        },
        faults,
    }
}

/// One random walk of test `test`; on a broken invariant, the report to print.
fn walk(test: &str, seed: u64, steps: usize, faults: Faults) -> Result<Stats, String> {
    let mut sim = Sim::new(config_for(seed, faults), seed);
    for _ in 0..steps {
        let step = sim.random_step();
        if let Err(broken) = sim.step(step) {
            return Err(report(&sim, test, seed, steps, &broken));
        }
    }
    Ok(sim.stats.clone())
}

fn report(sim: &Sim, test: &str, seed: u64, steps: usize, broken: &str) -> String {
    let mut out = format!(
        "seed {seed}, step {}: {broken}\n{:?}\nreplay: SIM_SEED={seed} SIM_STEPS={steps} cargo test -p node \
         --test simulator {test} -- --include-ignored (with the same SIM_FAULTS, if set)\nsteps:\n",
        sim.step_no, sim.cfg
    );
    for (i, s) in sim.log.iter().enumerate() {
        out += &format!("  {:>4}  {s}\n", i + 1);
    }
    out += "copies now:\n";
    for sid in sim.sessions() {
        out += &sim.describe(sid);
    }
    out
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `SIM_FAULTS`, when set, instead of the test's own faults.
fn faults_from_env(faults: Faults) -> Faults {
    let Ok(f) = std::env::var("SIM_FAULTS") else {
        return faults;
    };
    Faults {
        cuts: f.contains("cuts"),
        crashes: f.contains("crashes"),
        losses: f.contains("losses"),
        stale_cookies: f.contains("stale"),
        forward_timeouts: f.contains("forward"),
        lagging_views: f.contains("lag"),
    }
}

/// Runs test `test`: `seeds` walks of `steps` steps (or what the environment says), panicking with the first failure.
fn walks(test: &str, seeds: u64, steps: usize, faults: Faults) -> Stats {
    let seeds = match env("SIM_SEED") {
        Some(s) => s..s + 1,
        None => 0..env("SIM_SEEDS").unwrap_or(seeds),
    };
    let steps = env("SIM_STEPS").map_or(steps, |s| s as usize);
    let faults = faults_from_env(faults);
    let survey = std::env::var_os("SIM_SURVEY").is_some();
    let mut total = Stats::default();
    let mut failed = 0;
    for seed in seeds {
        match walk(test, seed, steps, faults) {
            Ok(s) => total.add(&s),
            Err(report) if survey => {
                failed += 1;
                eprintln!("{}", report.lines().next().unwrap_or_default());
            }
            Err(report) => panic!("{report}"),
        }
    }
    eprintln!("{total:?}");
    assert_eq!(failed, 0, "walks broke an invariant (listed above)");
    total
}

/// 200 walks of 100 steps: 20 000 steps, about a second in a debug build.
#[test]
fn random_walks_through_crashes_and_empty_restarts_keep_every_invariant() {
    let total = walks(
        "random_walks_through_crashes_and_empty_restarts_keep_every_invariant",
        200,
        100,
        CRASHES,
    );
    assert!(total.acked > 1000, "the walks acknowledged writes");
    assert!(
        total.promotions > 0 && total.installs > 0,
        "and took sessions over"
    );
}

// Known findings, each met about once in a million steps of these walks (5 times in 2 000 000 steps of
// 4 000 walks of 500): (A) a primary granting its session tells its old copies to drop theirs at once; if the
// puller never installs it (it died, or the answer was lost with the granter), a live copy was dropped for
// nothing; (B) two takeovers from one epoch (a grant by the owner, and a promotion by its copy once the owner
// died) give two owners of the same next epoch: they fence each other and one drops acknowledged writes.
// ((C), a late full copy from an older owner bringing a deleted session back, is fixed: tombstones keep the
// epoch and refuse older copies; `replicate::tests::a_late_copy_from_an_older_owner_does_not_bring_a_removed_session_back`.) See
// `scenarios::a_granter_dying_before_its_answer_arrives_leaves_the_old_copies_in_place` for (A).
#[test]
#[ignore = "soak: runs for minutes, and still meets the rare races in the comment"]
fn a_long_soak_through_crashes_and_empty_restarts_keeps_every_invariant() {
    walks(
        "a_long_soak_through_crashes_and_empty_restarts_keeps_every_invariant",
        5000,
        400,
        CRASHES,
    );
}

// Known finding: with messages lost and late, two nodes can own one session at different epochs after
// crashes (seed 60: n0 took it over at epoch 2 from n1 while n2 still served it at epoch 1 with no live copy,
// acknowledging at once as a session without copies does); a late full copy from n0, dead by then, reaches
// n2 and replaces its acknowledged write (invariant 1). Epochs are raised locally (+1), so two takeovers from
// one epoch cannot be told apart: a fix is a protocol change. (The orphaned-secondary race this walk first
// found is fixed: `scenarios::an_orphaned_secondary_does_not_promote_its_stale_copy_over_a_newer_one`.)
#[test]
#[ignore = "finding: two owners after crashes with lost messages (see the comment)"]
fn random_walks_with_lost_and_late_messages_keep_every_invariant() {
    walks(
        "random_walks_with_lost_and_late_messages_keep_every_invariant",
        200,
        100,
        Faults {
            losses: true,
            ..CRASHES
        },
    );
}

// Known finding: primary-backup without a quorum splits under partitions: both sides take the session (or
// keep it) and acknowledge writes, the same epoch may be owned twice, and the side that loses the fencing
// race drops acknowledged writes. A design limit of the pair topology rather than a local bug.
#[test]
#[ignore = "finding: split brain under partitions (see the comment)"]
fn random_walks_with_cut_links_keep_every_invariant() {
    walks(
        "random_walks_with_cut_links_keep_every_invariant",
        200,
        100,
        Faults {
            cuts: true,
            ..CRASHES
        },
    );
}

// Known finding: a forward that times out makes the node holding a copy promote it while the owner runs;
// safe while that copy is the owner's current one (the owner is fenced). Two such takeovers from one epoch
// give two owners of the next epoch (seed 84: invariant 2). Fixed since: an orphan copy is no longer promoted
// over the cookie's pair, and a deleted session is no longer brought back by the old owner's late full copy
// (seed 54 before).
#[test]
#[ignore = "finding: promotions while the owner runs (see the comment)"]
fn random_walks_with_forward_timeouts_keep_every_invariant() {
    walks(
        "random_walks_with_forward_timeouts_keep_every_invariant",
        200,
        400,
        Faults {
            forward_timeouts: true,
            ..CRASHES
        },
    );
}

// Known findings: (1) a node that sees its peers as dead or gone a little too long after a restart
// (`responsive` never probes a peer it sees as dead; a peer seen as gone skips the lease wait) promotes a copy
// while its owner runs; (2) a write still waiting on a node when its session is deleted there, and then owned
// there again, is acknowledged by the new tenure's progress though it is in no copy (`Mark` has no tenure).
#[test]
#[ignore = "findings: lagging views after restarts, and waiters outliving their tenure (see the comment)"]
fn random_walks_with_lagging_views_and_old_cookies_keep_every_invariant() {
    let faults = Faults {
        lagging_views: true,
        stale_cookies: true,
        ..CRASHES
    };
    walks(
        "random_walks_with_lagging_views_and_old_cookies_keep_every_invariant",
        200,
        100,
        faults,
    );
}

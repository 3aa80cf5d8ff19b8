//! The multi-node simulator (tests/sim) run as tests: seeded random walks over the pure replication core,
//! every invariant (tests/sim/check.rs) checked after each step; hand-written races in `scenarios`. Walks of
//! a pair, and of a broadcast group (issue 11), which end healed and quiet with every member's copies alike.
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
use node::topology::Topology;
use sim::{check, Config, Faults, Sim, Stats};

/// What the default walks inject: crashes and empty restarts, on top of what every walk has (concurrent
/// writes from several clients, deletes, messages delivered in any order, requests reaching any node).
const CRASHES: Faults = Faults {
    crashes: true,
    ..Faults::NONE
};

/// What a test walks: a topology, its faults, and its replication mode (`None`: one walk in five async).
#[derive(Clone, Copy)]
struct Kind {
    topology: Topology,
    faults: Faults,
    mode: Option<ReplicationMode>,
}

/// A pair, both modes.
const fn pair(faults: Faults) -> Kind {
    Kind {
        topology: Topology::Pair,
        faults,
        mode: None,
    }
}

/// A broadcast group in `mode`.
const fn broadcast(mode: ReplicationMode, faults: Faults) -> Kind {
    Kind {
        topology: Topology::Broadcast,
        faults,
        mode: Some(mode),
    }
}

/// A walk's shape follows from its seed alone, so the seed is all a replay needs. A broadcast group has two
/// to four clients, who sometimes share a session.
fn config_for(seed: u64, kind: Kind) -> Config {
    let broadcast = kind.topology == Topology::Broadcast;
    let mode = if seed % 5 == 4 {
        ReplicationMode::Async
    } else {
        ReplicationMode::Sync
    };
    Config {
        topology: kind.topology,
        nodes: 3 + (seed % 3) as usize,
        clients: usize::from(broadcast) + 1 + (seed / 3 % 3) as usize,
        mode: kind.mode.unwrap_or(mode),
        faults: kind.faults,
        shared: broadcast,
    }
}

/// One random walk of test `test`; on a broken invariant, the report to print. A broadcast walk ends
/// healed and quiet, and every live member must then hold the same copy of every owned session.
fn walk(test: &str, seed: u64, steps: usize, kind: Kind) -> Result<Stats, String> {
    let mut sim = Sim::new(config_for(seed, kind), seed);
    for _ in 0..steps {
        let step = sim.random_step();
        if let Err(broken) = sim.step(step) {
            return Err(report(&sim, test, seed, steps, &broken));
        }
    }
    if kind.topology == Topology::Broadcast {
        let end = sim
            .quiesce(QUIESCE_STEPS)
            .and_then(|()| check::converged(&sim));
        if let Err(broken) = end {
            return Err(report(&sim, test, seed, steps, &broken));
        }
    }
    Ok(sim.stats.clone())
}

/// Steps of delivering a quiescing walk may take per round (a few hundred at most in practice).
const QUIESCE_STEPS: usize = 2000;

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

/// Runs test `test`: `seeds` walks of `steps` steps (or what the environment says) of a pair, panicking with
/// the first failure.
fn walks(test: &str, seeds: u64, steps: usize, faults: Faults) -> Stats {
    walks_of(test, seeds, steps, pair(faults))
}

/// `walks`, of any kind.
fn walks_of(test: &str, seeds: u64, steps: usize, kind: Kind) -> Stats {
    let seeds = match env("SIM_SEED") {
        Some(s) => s..s + 1,
        None => 0..env("SIM_SEEDS").unwrap_or(seeds),
    };
    let steps = env("SIM_STEPS").map_or(steps, |s| s as usize);
    let kind = Kind {
        faults: faults_from_env(kind.faults),
        ..kind
    };
    let survey = std::env::var_os("SIM_SURVEY").is_some();
    let mut total = Stats::default();
    let mut failed = 0;
    for seed in seeds {
        match walk(test, seed, steps, kind) {
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

// ---- The broadcast group (issue 11): every member holds every session; any member takes any request. ----

/// 200 walks of 100 steps of one sync group of three to five members behind a round-robin balancer: two to
/// four clients (some sharing a session) write at every member at once, members crash and restart empty;
/// each walk ends healed and quiet, with every live member holding the same copy of every owned session.
/// Under a second in a debug build. Async mode has a finding of its own (below).
///
/// `SIM_SEED=360` once found a deleted session coming back (invariant 3): owner n2 dies; n0 promotes its copy
/// to epoch 2 while n1 holds the session's lock pulling it; the client deletes the session at n0; n1 finds
/// it nowhere and promotes its orphan copy to epoch 2 as well, and n0's tombstone, which refused only older
/// epochs, took it. A tombstone now refuses its own epoch too (`replicate::incoming`): 10 000 walks pass.
#[test]
fn random_walks_of_a_broadcast_group_with_writers_at_every_member_keep_every_invariant() {
    let total = walks_of(
        "random_walks_of_a_broadcast_group_with_writers_at_every_member_keep_every_invariant",
        200,
        100,
        broadcast(ReplicationMode::Sync, CRASHES),
    );
    assert!(total.acked > 1000, "the walks acknowledged writes");
    assert!(
        total.promotions > 0 && total.installs > 0,
        "and took sessions over"
    );
}

// Finding, fixed in the shell: a named copy now forwards to the cookie's primary when its own owner does not
// answer (seed 1 passes since). Still failing: about one async walk in 40 (seeds 13, 21, 98, 154, 177 of
// 200), two owners of one epoch through two takeovers from the same epoch, the pair's known finding (epochs
// are raised locally, +1): in async mode, e.g. seed 13, an owner that promoted itself to epoch 2 and
// acknowledged writes no copy had yet dies, and another member promotes its epoch-1 copy to epoch 2 too.
// What the fix was for (seed 1, session s3): the owner n0 of a session
// dies; a request reaching its named secondary n1 promotes n1's copy to epoch 2, and the re-homing names n2
// the new secondary. Async, the write is answered at once, with a cookie naming (n1, n2), before n1's full
// copy reaches n2. The client's next request reaches n2: its copy is named by the cookie, so `execute`
// treats it as the secondary and forwards to *its copy's* owner, the dead n0, not to the cookie's primary
// n1; that fails and n2 promotes its epoch-1 copy to epoch 2 as well. Two owners of epoch 2 acknowledge
// writes (invariant 2); they fence each other later and one side's writes are gone. In sync mode the cookie
// naming n2 is only given once n2 holds n1's copy. A fix is in the shell (a named copy whose owner is not
// the cookie's primary is behind it: ask the cookie's primary, as for an orphan).
#[test]
#[ignore = "finding: two owners of one epoch after takeovers from the same epoch (see the comment)"]
fn random_walks_of_a_broadcast_group_in_async_mode_keep_every_invariant() {
    walks_of(
        "random_walks_of_a_broadcast_group_in_async_mode_keep_every_invariant",
        200,
        100,
        broadcast(ReplicationMode::Async, CRASHES),
    );
}

// Known finding: as in the pair, a group without a quorum splits under partitions. A member cut off from the
// owner (seed 63: n2 isolated) promotes its copy and acknowledges writes alone, as a session whose peers are
// all gone does (DESIGN 4.4); the owner, its calls to the member failed, re-homes to no copy and acknowledges
// its own writes alone; after the heal the higher epoch's full copy replaces the owner's, and its writes are
// gone (invariant 1), or two sides own one epoch (invariant 2).
#[test]
#[ignore = "finding: split brain under partitions (see the comment)"]
fn random_walks_of_a_broadcast_group_through_partitions_keep_every_invariant() {
    walks_of(
        "random_walks_of_a_broadcast_group_through_partitions_keep_every_invariant",
        200,
        100,
        broadcast(
            ReplicationMode::Sync,
            Faults {
                cuts: true,
                ..CRASHES
            },
        ),
    );
}

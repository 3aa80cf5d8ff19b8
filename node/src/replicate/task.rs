//! The I/O side of replication: one task per peer drains the sessions queued for it, sends their items as
//! one batch, and applies the answers. One batch is in flight per peer; whatever is queued meanwhile goes in
//! the next, so under load one copy covers many updates (seed 000 claim 23). In `async` mode a batch also
//! waits for `max_updates` queued sessions or `max_delay`, whichever comes first (seed 003 [0067]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{on_reply, outgoing, AfterReply};
use crate::ids::NodeId;
use crate::server::Node;
use crate::store::Entry;
use crate::wire::Item;

/// Most sessions in one batch.
const MAX_BATCH: usize = 1024;

/// Runs until the node stops.
pub async fn run(node: Arc<Node>, peer: NodeId, mut rx: mpsc::UnboundedReceiver<Arc<Entry>>) {
    let batching = !node.sync();
    let max_updates = node.cfg.replication.max_updates;
    let max_delay = node.cfg.replication.max_delay;
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut queued = vec![first];
        if batching {
            let deadline = tokio::time::Instant::now() + max_delay;
            while queued.len() < max_updates {
                tokio::select! {
                    e = rx.recv() => match e { Some(e) => queued.push(e), None => return },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        while queued.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => queued.push(e),
                Err(_) => break,
            }
        }
        node.metrics.repl_queue.sub(queued.len() as i64);
        send_batch(&node, peer, queued).await;
    }
}

async fn send_batch(node: &Arc<Node>, peer: NodeId, queued: Vec<Arc<Entry>>) {
    let mut seen: HashSet<usize> = HashSet::new();
    let mut sent: Vec<(Arc<Entry>, u64)> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    for entry in queued {
        if !seen.insert(Arc::as_ptr(&entry) as usize) {
            continue;
        }
        let mut slot = entry.slot.lock().await;
        if let Some((item, version)) = outgoing(&mut slot, peer) {
            if matches!(item, Item::Full { .. }) {
                node.metrics.full_copies.inc();
            }
            items.push(item);
            drop(slot);
            sent.push((entry, version));
        }
    }
    if items.is_empty() {
        return;
    }
    node.metrics.repl_items.inc_by(items.len() as u64);
    let Some(p) = node.members.peer(peer) else {
        return;
    };
    let sent_at = Instant::now();
    let reply = p
        .batch(node.id(), items, node.cfg.replication.peer_timeout)
        .await;
    node.metrics
        .repl_rtt
        .observe(sent_at.elapsed().as_secs_f64());
    let results = match reply {
        Ok(results) => results,
        Err(e) => {
            node.metrics.repl_errors.inc();
            warn!(sessions = sent.len(), error = %e, "replication batch failed: peer marked down");
            node.members.mark_failed(peer, &e);
            for (entry, _) in sent {
                let mut slot = entry.slot.lock().await;
                if slot
                    .session
                    .as_ref()
                    .is_some_and(|s| s.secondary == Some(peer))
                {
                    node.rehome(&entry, &mut slot, &[peer]);
                } else if slot.session.is_none() {
                    // A removal whose copy went down with the peer: nothing is left to tell; release the waiter.
                    slot.removed = None;
                    entry.update_mark(|m| m.lease_seq += 1);
                    node.store.remove(&entry);
                }
            }
            return;
        }
    };
    let lease_until = sent_at + node.cfg.replication.lease;
    for ((entry, version), result) in sent.into_iter().zip(results) {
        let mut slot = entry.slot.lock().await;
        match on_reply(&mut slot, version, &result) {
            AfterReply::Acked(v) => entry.update_mark(|m| {
                m.copied = m.copied.max(v + 1);
                m.lease_until = m.lease_until.max(lease_until);
                m.lease_seq += 1;
            }),
            AfterReply::Resend => {
                debug!(session = %entry.id.log_hash(), "copy out of step: sending the full session");
                node.enqueue(peer, &entry);
            }
            AfterReply::Fenced => {
                warn!(session = %entry.id.log_hash(), ?result, "a newer owner exists: local copy dropped");
                node.metrics.fenced.inc();
                entry.update_mark(|m| m.fenced = true);
            }
        }
        if slot.session.is_none() && slot.removed.is_none() {
            node.store.remove(&entry);
        }
    }
}

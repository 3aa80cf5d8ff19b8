//! Text for failure reports and traces: a message, and every node's copy of a session.

use node::wire::PullResult;

use super::*;

impl Sim {
    /// What message `id` is, for the step list of a report.
    pub(super) fn what(&self, id: u64) -> String {
        let Some(m) = self.wire.iter().find(|m| m.id == id) else {
            return "(gone)".into();
        };
        let body = match &m.body {
            Body::Batch { items, .. } => {
                let items: Vec<String> = items.iter().map(|(i, _)| item_text(i)).collect();
                format!("batch [{}]", items.join(", "))
            }
            Body::BatchReply { batch, results } => format!("answer to {batch}: {results:?}"),
            Body::Pull { sid, .. } => format!("pull s{}", sid.0),
            Body::PullReply { pull, result, .. } => match result {
                PullResult::Granted { session: s } => {
                    format!("answer to {pull}: granted e{} v{}", s.epoch, s.version)
                }
                r => format!("answer to {pull}: {r:?}"),
            },
        };
        let late = if m.orphan { " (given up on)" } else { "" };
        format!("n{} -> n{}: {body}{late}", m.from, m.to)
    }

    /// Every node's copy of session `sid`, for failure reports.
    pub(crate) fn describe(&self, sid: SessionId) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(e) = n.entries.get(&sid) else {
                continue;
            };
            let slot = &e.slot;
            let life = if n.alive { "" } else { " (dead)" };
            let life = if e.pulling.is_some() {
                " (pulling)"
            } else {
                life
            };
            match &slot.session {
                Some(s) => {
                    let mut keys: Vec<&String> = s.data.keys().collect();
                    keys.sort_by_key(|k| k[1..].parse::<u64>().unwrap_or(0));
                    out += &format!(
                        "  s{} n{i}{life}: {:?} e{} v{} primary n{} secondary {:?} copies {:?} mark {}{} keys {:?}\n",
                        sid.0,
                        slot.role,
                        s.epoch,
                        s.version,
                        self.index(s.primary),
                        s.secondary.map(|x| self.index(x)),
                        slot.copies.iter().map(|c| (self.index(c.peer), c.acked)).collect::<Vec<_>>(),
                        e.mark.copied,
                        if e.mark.fenced { " fenced" } else { "" },
                        keys
                    );
                }
                None => out += &format!("  s{} n{i}{life}: entry without a session\n", sid.0),
            }
        }
        out
    }
}

fn item_text(i: &Item) -> String {
    match i {
        Item::Deltas {
            sid,
            epoch,
            base,
            deltas,
        } => format!(
            "deltas s{} e{epoch} v{base}->{}",
            sid.0,
            base + deltas.len() as u64
        ),
        Item::Full { session: s } => format!("full s{} e{} v{}", s.id.0, s.epoch, s.version),
        Item::Validate {
            sid,
            epoch,
            version,
        } => format!("validate s{} e{epoch} v{version}", sid.0),
        Item::Remove { sid, epoch } => format!("remove s{} e{epoch}", sid.0),
        Item::Drop {
            sid,
            epoch,
            version,
        } => format!("drop s{} e{epoch} v{version}", sid.0),
    }
}

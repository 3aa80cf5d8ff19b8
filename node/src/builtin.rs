//! The built-in session API (DESIGN §6), the first [`App`]: `GET /session`, `PATCH /session` (JSON merge
//! patch), `POST /session/incr/{key}` and `DELETE /session`.

use std::sync::Arc;

use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::app::{
    empty, error_reply, json_reply, text_reply, App, Applied, Change, ClientRequest, Reply,
};
use crate::membership::Membership;
use crate::session::{Outcome, Session};

/// Longest key `POST /session/incr/{key}` takes.
const MAX_KEY_LEN: usize = 256;

/// What the client asked of its session.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `GET /session`: the session's data.
    Get,
    /// `PATCH /session`: a JSON merge patch (always an object) applied to the data.
    Patch(Value),
    /// `POST /session/incr/{key}`: add one to the number at this key.
    Incr(String),
    /// `DELETE /session`: end the session and clear the cookie.
    Delete,
}

impl Op {
    /// The operation's name in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Patch(_) => "patch",
            Op::Incr(_) => "incr",
            Op::Delete => "delete",
        }
    }
}

/// The built-in API; it names nodes in its answers through the membership.
pub struct BuiltinApi {
    /// The node's view of the cluster, to turn node ids into names.
    pub members: Arc<Membership>,
}

impl App for BuiltinApi {
    type Call = Op;
    type Pending = ();
    type Prepared = Change;

    fn parse(&self, req: &ClientRequest) -> Result<Op, Reply> {
        let parts = &req.parts;
        // Every body is read whole for this app (`streams_bodies_over` is `None`).
        let body = req.body.bytes().cloned().unwrap_or_default();
        let path = parts.uri.path();
        let m = &parts.method;
        if path == "/session" || path == "/session/" {
            return match *m {
                Method::GET => Ok(Op::Get),
                Method::DELETE => Ok(Op::Delete),
                Method::PATCH => match serde_json::from_slice::<Value>(&body) {
                    Ok(v @ Value::Object(_)) => Ok(Op::Patch(v)),
                    Ok(_) => Err(error_reply(
                        StatusCode::BAD_REQUEST,
                        "a merge patch must be a JSON object",
                    )),
                    Err(e) => Err(error_reply(
                        StatusCode::BAD_REQUEST,
                        &format!("body is not JSON: {e}"),
                    )),
                },
                _ => Err(method_not_allowed("GET, PATCH, DELETE")),
            };
        }
        if let Some(key) = path.strip_prefix("/session/incr/") {
            if *m != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            if key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('/') {
                return Err(error_reply(
                    StatusCode::BAD_REQUEST,
                    "the key must be 1 to 256 characters without `/`",
                ));
            }
            return Ok(Op::Incr(key.to_string()));
        }
        Err(error_reply(StatusCode::NOT_FOUND, "no such path"))
    }

    fn label(&self, op: &Op) -> &'static str {
        op.name()
    }

    fn may_write(&self, op: &Op) -> bool {
        !matches!(op, Op::Get)
    }

    fn ends_session(&self, op: &Op) -> bool {
        matches!(op, Op::Delete)
    }

    fn prepare(&self, op: &Op, _req: &ClientRequest, _session: &Session) -> Result<Change, Reply> {
        Ok(match op {
            Op::Get => Change::Nothing,
            Op::Patch(p) => Change::Patch(p.clone()),
            Op::Incr(key) => Change::Increment(key.clone()),
            Op::Delete => Change::Delete,
        })
    }

    async fn run(
        &self,
        _op: &Op,
        _req: &ClientRequest,
        change: Change,
    ) -> Result<(Change, ()), Reply> {
        Ok((change, ()))
    }

    fn answer(
        &self,
        _op: &Op,
        _pending: Option<()>,
        session: Option<&Session>,
        applied: Applied,
    ) -> Reply {
        match (applied, session) {
            (Applied::Write(Outcome::Incremented { value, version }), _) => {
                json_reply(StatusCode::OK, &json!({"value": value, "version": version}))
            }
            (Applied::Deleted, _) | (_, None) => empty(StatusCode::NO_CONTENT),
            (_, Some(s)) => text_reply(
                StatusCode::OK,
                s.to_json(|id| self.members.name_of(id)).to_string(),
            ),
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

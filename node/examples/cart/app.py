"""A small shop whose cart lives in the session, to put behind the node in sidecar mode (DESIGN §6).

The app knows nothing of replication: it reads the session the node hands it (`X-Session`, or the URL in
`X-Session-Ref` when the session is too large for a header) and answers what should change as a JSON merge
patch in `X-Session-Patch`. With `--own-sessions` it keeps sessions in its own memory instead (a cookie
`cart_sid`), which is the same shop without the node: the baseline a benchmark compares against.

    /usr/bin/python3 app.py --port 3001 [--host 127.0.0.1] [--own-sessions]
"""

import argparse
import copy
import json
import logging
import threading
import urllib.request
import uuid

import flask.cli
from flask import Flask, g, jsonify, redirect, render_template, request

# Prices in cents, so totals add up exactly.
PRODUCTS = {"apple": 50, "bread": 220, "cheese": 480, "coffee": 650, "milk": 110, "tea": 340}

app = Flask(__name__)


def merge_patch(target, patch):
    """RFC 7396 in place: what the node does to its copy, done here to show the result of a change."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            merge_patch(target[key], value)
        else:
            target[key] = value


class NodeSessions:
    """The node holds the session and serialises requests of one session; the app only reads and patches."""

    def load(self):
        ref = request.headers.get("X-Session-Ref")
        if ref:
            # Too large for a header: the node lends it at this URL while our call is in flight.
            with urllib.request.urlopen(ref, timeout=5) as r:
                data = json.load(r)["data"]
        else:
            data = json.loads(request.headers.get("X-Session", "{}"))
        return request.headers.get("X-Session-Id", ""), data

    def save(self, response, patch):
        response.headers["X-Session-Patch"] = json.dumps(patch, ensure_ascii=True, separators=(",", ":"))

    def done(self, response):
        pass


class OwnSessions:
    """Sessions in this process's memory, keyed by the app's own cookie; lost when the process goes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sessions = {}  # id -> (lock, data)

    def load(self):
        sid = request.cookies.get("cart_sid")
        with self.lock:
            if sid not in self.sessions:
                sid = uuid.uuid4().hex
                self.sessions[sid] = (threading.Lock(), {})
                g.new_sid = sid
            lock, data = self.sessions[sid]
        # One request of a session at a time, as the node does, so two quick adds both count.
        lock.acquire()
        g.held = lock
        return sid, copy.deepcopy(data)

    def save(self, response, patch):
        merge_patch(self.sessions[g.sid][1], patch)

    def done(self, response):
        if "new_sid" in g:
            response.set_cookie("cart_sid", g.new_sid, httponly=True, samesite="Lax")


store = NodeSessions()


@app.before_request
def load_session():
    if request.endpoint != "healthz":
        g.sid, g.session = store.load()


@app.after_request
def finish_session(response):
    store.done(response)
    return response


@app.teardown_request
def release_session(_exc):
    if "held" in g:
        g.pop("held").release()


def cart_json():
    cart = g.session.get("cart", {})
    return {"cart": cart, "count": sum(cart.values()), "orders": g.session.get("orders", 0)}


def changed(patch, fields):
    """The answer to a change: a redirect home for a browser's form, the new cart for an API client."""
    merge_patch(g.session, patch)
    wants_json = request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"
    body = cart_json()
    response = jsonify({k: body[k] for k in fields}) if wants_json else redirect("/", code=303)
    store.save(response, patch)
    return response


def error(status, message):
    return jsonify({"error": message}), status


@app.get("/")
def shop():
    body = cart_json()
    total = sum(PRODUCTS[p] * q for p, q in body["cart"].items() if p in PRODUCTS)
    return render_template("shop.html", products=PRODUCTS, total=total, sid=g.sid, **body)


@app.get("/cart")
def cart():
    return jsonify(cart_json())


@app.post("/cart/add")
def add():
    fields = request.get_json(silent=True) if request.is_json else request.form
    if not hasattr(fields, "get"):
        return error(400, "expected a JSON object or a form")
    product = fields.get("product")
    if product not in PRODUCTS:
        return error(400, f"unknown product: {product!r}")
    try:
        qty = int(fields.get("qty", 1))
    except (TypeError, ValueError):
        return error(400, "qty must be an integer")
    if not 1 <= qty <= 99:
        return error(400, "qty must be between 1 and 99")
    have = g.session.get("cart", {}).get(product, 0)
    return changed({"cart": {product: have + qty}}, ["cart", "count"])


@app.post("/checkout")
def checkout():
    if not g.session.get("cart"):
        return error(409, "the cart is empty")
    return changed({"cart": None, "orders": g.session.get("orders", 0) + 1}, ["cart", "count", "orders"])


@app.get("/healthz")
def healthz():
    return "ok"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--own-sessions", action="store_true", help="keep sessions here, not in the node")
    args = parser.parse_args()
    global store
    if args.own_sessions:
        store = OwnSessions()
    # Quiet: three of these run beside a cluster in one terminal; a line per request or a banner each is noise.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    flask.cli.show_server_banner = lambda *args: None
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()

//! The fake PBX's function key sets, in the request and answer shapes of the
//! STARFACE REST API (`/functionkeysets`, `FunctionKeySet`, `FunctionKey`):
//! every request acts for the user named in `actOnBehalfOf`; a key created
//! without `position` is appended at the end, one with a position shifts the
//! others aside; `PUT /functionkeysets/{set}/phone?phone=…` records a reload.
//! Requests outside the documented shapes get the one documented error (500)
//! and are written to `Keys::violations`, so a test can assert there are none.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::*;

/// One user's key set.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub id: String,
    pub name: String,
    /// The keys in their order on the phone (`FunctionKey` objects, `position` kept in step).
    pub keys: Vec<Value>,
    /// Phones using this set.
    pub phones: Vec<String>,
}

/// The function key state of the fake.
#[derive(Default)]
pub struct Keys {
    /// Key sets by the login of their owner.
    pub sets: Mutex<BTreeMap<String, Vec<KeySet>>>,
    /// Phones asked to reload, as (set id, phone).
    pub reloads: Mutex<Vec<(String, String)>>,
    /// Every function key request that changed something, as "METHOD set".
    pub changes: Mutex<Vec<String>>,
    /// Requests outside the spec's shapes.
    pub violations: Mutex<Vec<String>>,
    /// A key set whose reload request is not answered while it is named here
    /// (a client stopped in the middle of its work can be caught there).
    pub hold_reload_of: Mutex<Option<String>>,
    next_id: AtomicU32,
}

impl Keys {
    /// Gives `login` one set `fks-<login>` with `own` keys (quick dials) and one phone.
    pub fn seed(&self, login: &str, account_id: u64, own: usize) {
        let keys = (0..own)
            .map(|i| {
                json!({
                    "accountId": account_id.to_string(),
                    "functionKeyType": "QUICKDIAL",
                    "id": format!("own-{login}-{i}"),
                    "name": format!("Speed {i}"),
                    "position": i,
                    "directCallTargetnumber": format!("10{i}"),
                })
            })
            .collect();
        self.sets.lock().unwrap().insert(
            login.to_string(),
            vec![KeySet {
                id: format!("fks-{login}"),
                name: format!("Keys of {login}"),
                keys,
                phones: vec![format!("phone-of-{login}")],
            }],
        );
    }

    /// The keys of `login`'s first set.
    pub fn keys_of(&self, login: &str) -> Vec<Value> {
        self.sets.lock().unwrap()[login][0].keys.clone()
    }

    fn violation(&self, what: String) -> Response {
        self.violations.lock().unwrap().push(what);
        status(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

type Q = Query<BTreeMap<String, String>>;

/// The acting user's sets, or the rejection.
fn acting(
    pbx: &Pbx,
    h: &HeaderMap,
    q: &BTreeMap<String, String>,
    what: &str,
) -> Result<String, Box<Response>> {
    if let Some(r) = pbx.authorize(h, what) {
        return Err(Box::new(r));
    }
    match q.get("actOnBehalfOf") {
        Some(login) if pbx.keys.sets.lock().unwrap().contains_key(login) => Ok(login.clone()),
        Some(login) => Err(Box::new(
            pbx.keys
                .violation(format!("actOnBehalfOf {login:?}: no such user")),
        )),
        None => Err(Box::new(pbx.keys.violation(
            "function keys of the REST user itself requested".into(),
        ))),
    }
}

fn renumber(keys: &mut [Value]) {
    for (i, k) in keys.iter_mut().enumerate() {
        k["position"] = json!(i);
    }
}

/// Checks a `FunctionKey` body: the required fields with their types
/// (`id` and `position` may be left out when creating one).
fn check_key(k: &Value, creating: bool) -> Result<(), String> {
    let Some(o) = k.as_object() else {
        return Err("FunctionKey is not an object".into());
    };
    for f in ["accountId", "functionKeyType", "name"] {
        if !o.get(f).is_some_and(Value::is_string) {
            return Err(format!("FunctionKey.{f} missing or not a string"));
        }
    }
    if !creating && !o.get("id").is_some_and(Value::is_string) {
        return Err("FunctionKey.id missing or not a string".into());
    }
    if let Some(p) = o.get("position") {
        if !p.is_i64() {
            return Err("FunctionKey.position not an integer".into());
        }
    } else if !creating {
        return Err("FunctionKey.position missing".into());
    }
    if o["functionKeyType"] == "PHONEGENERICURL"
        && !o.get("genericURL").is_some_and(Value::is_string)
    {
        return Err("PHONEGENERICURL key without genericURL".into());
    }
    Ok(())
}

async fn list_sets(State(pbx): State<Arc<Pbx>>, h: HeaderMap, Query(q): Q) -> Response {
    let login = match acting(&pbx, &h, &q, "GET /functionkeysets") {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let sets = pbx.keys.sets.lock().unwrap()[&login].clone();
    Json(
        sets.iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "name": s.name,
                    "keyOrder": s.keys.iter().map(|k| k["id"].clone()).collect::<Vec<_>>(),
                })
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Runs `f` on set `set` of the acting user.
fn with_set(
    pbx: &Pbx,
    (h, q, what): (&HeaderMap, &BTreeMap<String, String>, &str),
    set: &str,
    f: impl FnOnce(&mut KeySet) -> Response,
) -> Response {
    let login = match acting(pbx, h, q, what) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let mut sets = pbx.keys.sets.lock().unwrap();
    match sets
        .get_mut(&login)
        .and_then(|v| v.iter_mut().find(|s| s.id == set))
    {
        Some(s) => f(s),
        None => {
            drop(sets);
            pbx.keys
                .violation(format!("set {set} is not a set of {login}"))
        }
    }
}

async fn list_keys(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Query(q): Q,
    UrlPath(set): UrlPath<String>,
) -> Response {
    let what = format!("GET /functionkeysets/{set}/");
    with_set(&pbx, (&h, &q, &what), &set, |s| {
        Json(s.keys.clone()).into_response()
    })
}

async fn create_key(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Query(q): Q,
    UrlPath(set): UrlPath<String>,
    Json(mut key): Json<Value>,
) -> Response {
    let what = format!("POST /functionkeysets/{set}/");
    if let Err(e) = check_key(&key, true) {
        return pbx.keys.violation(format!("{what}: {e}"));
    }
    let id = format!(
        "fk-{}",
        pbx.keys.next_id.fetch_add(1, Ordering::SeqCst) + 100
    );
    let keys = &pbx.keys;
    with_set(&pbx, (&h, &q, &what), &set, |s| {
        key["id"] = json!(id);
        let at = key["position"]
            .as_i64()
            .map(|p| (p.max(0) as usize).min(s.keys.len()))
            .unwrap_or(s.keys.len());
        s.keys.insert(at, key);
        renumber(&mut s.keys);
        keys.changes.lock().unwrap().push(format!("POST {set}"));
        (StatusCode::CREATED, Json(s.keys[at].clone())).into_response()
    })
}

async fn update_key(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Query(q): Q,
    UrlPath((set, id)): UrlPath<(String, String)>,
    Json(key): Json<Value>,
) -> Response {
    let what = format!("PUT /functionkeysets/{set}/{id}");
    if let Err(e) = check_key(&key, false) {
        return pbx.keys.violation(format!("{what}: {e}"));
    }
    let keys = &pbx.keys;
    with_set(&pbx, (&h, &q, &what), &set, |s| {
        let Some(at) = s.keys.iter().position(|k| k["id"] == id.as_str()) else {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        // A changed position moves the key (and the others aside), as the PBX does.
        let to =
            (key["position"].as_i64().unwrap_or(at as i64).max(0) as usize).min(s.keys.len() - 1);
        s.keys.remove(at);
        s.keys.insert(to, key);
        renumber(&mut s.keys);
        keys.changes.lock().unwrap().push(format!("PUT {set}"));
        StatusCode::OK.into_response()
    })
}

async fn delete_key(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Query(q): Q,
    UrlPath((set, id)): UrlPath<(String, String)>,
) -> Response {
    let keys = &pbx.keys;
    let what = format!("DELETE /functionkeysets/{set}/{id}");
    with_set(&pbx, (&h, &q, &what), &set, |s| {
        s.keys.retain(|k| k["id"] != id.as_str());
        renumber(&mut s.keys);
        keys.changes.lock().unwrap().push(format!("DELETE {set}"));
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn phones(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Query(q): Q,
    UrlPath(set): UrlPath<String>,
) -> Response {
    let what = format!("GET /functionkeysets/{set}/phones");
    with_set(&pbx, (&h, &q, &what), &set, |s| {
        Json(s.phones.clone()).into_response()
    })
}

async fn reload(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Query(q): Q,
    UrlPath(set): UrlPath<String>,
) -> Response {
    let keys = &pbx.keys;
    while keys.hold_reload_of.lock().unwrap().as_deref() == Some(set.as_str()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let phone = q.get("phone").cloned().unwrap_or_default();
    let what = format!("PUT /functionkeysets/{set}/phone");
    with_set(&pbx, (&h, &q, &what), &set, |s| {
        if !s.phones.contains(&phone) {
            return status(StatusCode::NOT_FOUND);
        }
        keys.reloads.lock().unwrap().push((set.clone(), phone));
        StatusCode::OK.into_response()
    })
}

pub fn router(pbx: Arc<Pbx>) -> Router {
    Router::new()
        .route("/rest/functionkeysets", get(list_sets))
        .route(
            "/rest/functionkeysets/{set}/",
            get(list_keys).post(create_key),
        )
        .route("/rest/functionkeysets/{set}/phones", get(phones))
        .route("/rest/functionkeysets/{set}/phone", put(reload))
        .route(
            "/rest/functionkeysets/{set}/{id}",
            put(update_key).delete(delete_key),
        )
        .with_state(pbx)
}

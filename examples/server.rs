//! An HTTP service in the shape of an SDK's server-side integration: one `Store` shared by every handler, users
//! assigned a variation on first activate and kept on it, goals tracked once.
//!
//! `Durability::Immediate` makes every write wait for an fsync; a blocked async worker thread would stall every
//! request it runs, so writes use `Store::set_async`, whose future resolves when a group commit made the write
//! durable (concurrent requests share the fsync, and no thread waits per request). Reads (a hash lookup and one
//! read of a record) stay on the async threads.
//!
//! Run: cargo run --example server                  (serves on 127.0.0.1:3000; USSDB_ADDR=host:port to change)
//!      curl localhost:3000/activate/checkout-test/user-42
//!      curl -X POST localhost:3000/track/checkout-test/user-42/purchase
//!      curl localhost:3000/mapping/checkout-test/user-42
//! Or:  cargo run --example server -- --demo        (starts on a free port, sends those requests, exits)

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use ussdb::{CampaignUserMap, Durability, Options, Store};

/// What every handler shares: the store (a cheap clone of one handle) and the campaigns' traffic splits.
#[derive(Clone)]
struct App {
    store: Store,
    campaigns: Arc<HashMap<&'static str, Vec<(&'static str, u32)>>>,
}

/// A store error or an unknown campaign, as an HTTP response.
enum Failure {
    NotFound(String),
    Store(ussdb::Error),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Failure::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Failure::Store(
                ussdb::Error::InvalidKey { .. } | ussdb::Error::ValueTooLarge { .. },
            ) => (
                StatusCode::BAD_REQUEST,
                "invalid user id or campaign key".to_owned(),
            ),
            Failure::Store(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<ussdb::Error> for Failure {
    fn from(e: ussdb::Error) -> Failure {
        Failure::Store(e)
    }
}

/// Stores `map` and waits, without blocking a worker thread, until it is durable.
async fn set_durably(store: &Store, map: CampaignUserMap) -> Result<(), Failure> {
    store.set_async(&map).await.map_err(Failure::Store)
}

/// Deterministic bucketing like the SDKs': a hash of the user id picks a point in 0..100 in the cumulative weights.
fn bucket(user_id: &str, variations: &[(&'static str, u32)]) -> &'static str {
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // A final mix spreads nearby ids over the whole range, as MurmurHash's finaliser does.
    let hash = (hash ^ (hash >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let point = ((hash ^ (hash >> 33)) % 100) as u32;
    let mut upper = 0;
    for &(name, weight) in variations {
        upper += weight;
        if point < upper {
            return name;
        }
    }
    variations.last().map_or("Control", |v| v.0)
}

async fn activate(
    State(app): State<App>,
    Path((campaign, user)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Failure> {
    let Some(variations) = app.campaigns.get(campaign.as_str()) else {
        return Err(Failure::NotFound(format!("no campaign {campaign:?}")));
    };
    if let Some(map) = app.store.get(&user, &campaign)? {
        return Ok(Json(
            json!({ "variationName": map.variation_name, "new": false }),
        ));
    }
    let variation = bucket(&user, variations);
    set_durably(&app.store, CampaignUserMap::new(user, campaign, variation)).await?;
    Ok(Json(json!({ "variationName": variation, "new": true })))
}

async fn track(
    State(app): State<App>,
    Path((campaign, user, goal)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, Failure> {
    let Some(mut map) = app.store.get(&user, &campaign)? else {
        return Err(Failure::NotFound(format!(
            "{user:?} was never activated in {campaign:?}"
        )));
    };
    // Two concurrent tracks of one user can both read the old goal list and the later set wins, as with the
    // SDKs' own storage; a per-user lock would close that gap if it matters.
    let counted = map.add_goal(&goal);
    if counted {
        set_durably(&app.store, map).await?;
    }
    Ok(Json(json!({ "counted": counted })))
}

async fn mapping(
    State(app): State<App>,
    Path((campaign, user)): Path<(String, String)>,
) -> Result<Json<CampaignUserMap>, Failure> {
    app.store
        .get(&user, &campaign)?
        .map(Json)
        .ok_or_else(|| Failure::NotFound(format!("no mapping for {user:?} in {campaign:?}")))
}

fn router(store: Store) -> Router {
    let campaigns = HashMap::from([
        ("checkout-test", vec![("Control", 50), ("Variation-1", 50)]),
        (
            "pricing-page",
            vec![("Control", 34), ("Cheaper", 33), ("Annual", 33)],
        ),
    ]);
    Router::new()
        .route("/activate/{campaign}/{user}", get(activate))
        .route("/track/{campaign}/{user}/{goal}", post(track))
        .route("/mapping/{campaign}/{user}", get(mapping))
        .with_state(App {
            store,
            campaigns: Arc::new(campaigns),
        })
}

/// Sends one HTTP/1.1 request to `addr` and returns the status line and body (no client library needed).
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok(format!("{status}  {body}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let dir = std::env::temp_dir().join(if demo {
        "ussdb-server-demo"
    } else {
        "ussdb-server"
    });
    if demo {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Opening reads every segment: keep that off the async threads too.
    let store = tokio::task::spawn_blocking(move || {
        Store::open_with(&dir, Options::default().durability(Durability::Immediate))
    })
    .await??;
    let app = router(store.clone());

    let addr = if demo {
        "127.0.0.1:0".to_owned()
    } else {
        std::env::var("USSDB_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    if !demo {
        println!(
            "serving on http://{addr} (store in {})",
            store.path().display()
        );
        axum::serve(listener, app).await?;
        return Ok(());
    }

    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for (method, path) in [
        ("GET", "/activate/checkout-test/user-42"),
        ("GET", "/activate/checkout-test/user-42"),
        ("POST", "/track/checkout-test/user-42/purchase"),
        ("POST", "/track/checkout-test/user-42/purchase"),
        ("GET", "/mapping/checkout-test/user-42"),
        ("GET", "/activate/no-such-campaign/user-42"),
    ] {
        println!(
            "{method:4} {path:40} -> {}",
            request(addr, method, path).await?
        );
    }
    server.abort();
    Ok(())
}

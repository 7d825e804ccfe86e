//! Transactional enqueue in an axum handler: the sign-up row and its welcome job commit together
//! or not at all, so there is never a user without a welcome mail, or a mail for a user whose
//! sign-up rolled back.
//!
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example axum_transactional_enqueue`, then
//! `curl -XPOST localhost:3000/signup -H 'content-type: application/json' -d '{"email":"a@b.c"}'`

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use faultline::{db, JobArgs, Store};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Serialize, Deserialize)]
struct SendWelcome {
    user_id: i64,
}

impl JobArgs for SendWelcome {
    const KIND: &'static str = "welcome.send";
}

#[derive(Clone)]
struct App {
    pool: PgPool,
    store: Store,
}

#[derive(Deserialize)]
struct Signup {
    email: String,
}

async fn signup(
    State(app): State<App>,
    Json(signup): Json<Signup>,
) -> Result<(StatusCode, Json<serde_json::Value>), (StatusCode, String)> {
    let failed = |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let mut tx = app.pool.begin().await.map_err(|e| failed(&e))?;
    let user_id: i64 = sqlx::query_scalar("insert into users (email) values ($1) returning id")
        .bind(&signup.email)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| failed(&e))?;
    // In the same transaction: workers are woken only if it commits.
    let job = app
        .store
        .enqueue_in(&mut tx, SendWelcome { user_id })
        .await
        .map_err(|e| failed(&e))?
        .into_job();
    tx.commit().await.map_err(|e| failed(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"user_id": user_id, "welcome_job": job.id})),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = db::connect(&url, &db::PoolConfig::default())?;
    db::migrate(&pool).await?;
    sqlx::query("create table if not exists users (id bigserial primary key, email text not null)")
        .execute(&pool)
        .await?;
    let app = App {
        store: Store::new(pool.clone()),
        pool,
    };
    let router = Router::new().route("/signup", post(signup)).with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, router).await?;
    Ok(())
}

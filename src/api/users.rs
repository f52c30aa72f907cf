//! `/v1/users/{id}`: profiles, recommendations and similar users.

use actix_web::{web, HttpRequest, HttpResponse};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use momentum_actors::index::UserProfile;
use momentum_actors::recommend::{Blend, Reason};

use crate::api::path_id;
use crate::cluster::LoggedEvent;
use crate::error::Error;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/users/{id}")
            .route(web::put().to(put_user))
            .route(web::get().to(get_user))
            .route(web::delete().to(erase_user)),
    )
    .service(web::resource("/v1/users/{id}/recommendations").route(web::get().to(recommendations)))
    .service(web::resource("/v1/users/{id}/similar-users").route(web::get().to(similar_users)));
}

/// Bounds on a profile.
const MAX_PREFERENCES: usize = 64;
const MAX_PROFILE_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct ProfileBody {
    #[serde(default)]
    preferences: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    signup_date: Option<String>,
    #[serde(default)]
    locale: Option<String>,
}
momentum_models::object_only!(ProfileBody);

impl ProfileBody {
    fn validate(self) -> Result<UserProfile, Error> {
        let bad = |m: &str| Error::bad("invalid_profile", m);
        if self.preferences.len() > MAX_PREFERENCES {
            return Err(bad("at most 64 preferences"));
        }
        let size = serde_json::to_vec(&self.preferences).map_or(usize::MAX, |v| v.len());
        if size > MAX_PROFILE_BYTES {
            return Err(bad("preferences take more than 16 KiB"));
        }
        if let Some(d) = &self.signup_date {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            if time::Date::parse(d, &format).is_err()
                && time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339)
                    .is_err()
            {
                return Err(bad("signup_date must be YYYY-MM-DD or RFC 3339"));
            }
        }
        if let Some(l) = &self.locale {
            if l.is_empty()
                || l.len() > 35
                || !l
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("locale must be a BCP 47 tag such as en-GB"));
            }
        }
        Ok(UserProfile {
            preferences: self.preferences,
            signup_date: self.signup_date,
            locale: self.locale,
        })
    }
}

fn retry(state: &AppState) -> u64 {
    state.settings.server.retry_after_secs
}

async fn put_user(
    id: web::Path<String>,
    body: web::Json<ProfileBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    let profile = body.into_inner().validate()?;
    let created = match &state.cluster {
        // Logged to the user's partition, applied by its owner in the partition's order and
        // kept in its snapshots: acknowledged once the broker confirmed it. "Created" is this
        // node's view: whether it has heard of the user.
        Some(cluster) => {
            let known = state.engine.index().users.get(&id).is_some();
            let record = LoggedEvent::profile(&id, profile.clone(), state.clock.now_ms());
            cluster.log_user_record(record).await?;
            !known
        }
        None => state.journal.put_user(&id, profile.clone()).await?,
    };
    let body = json!({"user_id": id.as_str(), "preferences": profile.preferences,
        "signup_date": profile.signup_date, "locale": profile.locale});
    Ok(if created {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

async fn get_user(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    let summary = state
        .engine
        .get_user(&id)
        .await
        .map_err(|e| Error::from_actor(e, retry(&state)))?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": id.as_str(),
        "preferences": summary.profile.preferences,
        "signup_date": summary.profile.signup_date,
        "locale": summary.profile.locale,
        "interactions": summary.interactions,
        "last_event_ms": summary.last_event_ms,
    })))
}

/// `DELETE /v1/users/{id}` (admin): GDPR erasure of every trace of the user, in memory and in
/// the store (events, snapshot entries, profile, scores, interventions).
async fn erase_user(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    crate::api::require_admin(&req, &state)?;
    path_id("user id", &id)?;
    if let Some(cluster) = &state.cluster {
        // Logged to the user's partition: the owner erases them in the log's order, and every
        // node drops what it holds of them once the erasure's item side reaches it. Whether
        // the user was known is the owner's to say, so the answer is `204` either way.
        let record = LoggedEvent::erasure(&id, state.clock.now_ms());
        cluster.log_user_record(record).await?;
        return Ok(HttpResponse::NoContent().finish());
    }
    if state.journal.erase_user(&id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Error::UnknownUser { id: id.to_string() })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecQuery {
    n: Option<usize>,
}

fn reason_text(state: &AppState, reason: &Reason) -> String {
    match reason {
        Reason::SimilarTo { item, verb } => {
            let name = state
                .engine
                .item_name(*item)
                .map(|n| n.to_string())
                .unwrap_or_default();
            let title = state
                .engine
                .index()
                .item_meta
                .get(item)
                .map(|m| m.title.clone())
                .filter(|t| !t.is_empty());
            match title {
                Some(t) => format!("similar to \"{t}\" ({name}) you {verb}"),
                None => format!("similar to item {name} you {verb}"),
            }
        }
        Reason::UsersLikeYou { neighbours } => {
            format!("{neighbours} users like you engaged with it")
        }
        Reason::MatchesInterest { term } => format!("matches your interest in {term}"),
        Reason::Popular => "popular with other users".to_string(),
    }
}

async fn recommendations(
    id: web::Path<String>,
    query: web::Query<RecQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    let max_n = state.settings.recommend.max_n;
    let n = query.n.unwrap_or(state.settings.recommend.default_n);
    if n == 0 || n > max_n {
        return Err(Error::bad(
            "invalid_query",
            format!("n must be in 1..={max_n}"),
        ));
    }
    // The running A/B experiment's variant for this user (its overrides are for the engine).
    let assignment = state.experiments.variant_for(&id);
    // A variant's overrides apply on top of the configured blend.
    let blend = assignment
        .as_ref()
        .map(|a| Blend::from_config(&state.settings.recommend).with_overrides(&a.overrides()));
    let recs = state
        .engine
        .recommend(&id, n, blend)
        .await
        .map_err(|e| Error::from_actor(e, retry(&state)))?;
    let items: Vec<_> = recs
        .items
        .iter()
        .filter_map(|s| {
            let name = state.engine.item_name(s.item)?;
            let reasons: Vec<String> = s.reasons.iter().map(|r| reason_text(&state, r)).collect();
            Some(json!({"item_id": &*name, "score": s.score, "confidence": s.confidence, "reasons": reasons}))
        })
        .collect();
    let recommendation_id = format!("{:032x}", rand::thread_rng().gen::<u128>());
    if let Some(a) = &assignment {
        state.experiments.record_served(a, &recommendation_id, &id);
    }
    Ok(HttpResponse::Ok().json(json!({
        "user_id": id.as_str(),
        "recommendation_id": recommendation_id,
        "strategy": recs.strategy.as_str(),
        "cached": recs.cached,
        "experiment": assignment.as_ref().map(|a| a.experiment()),
        "variant": assignment.as_ref().map(|a| a.variant()),
        "items": items,
    })))
}

async fn similar_users(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    let list = state
        .engine
        .similar_users(&id)
        .await
        .map_err(|e| Error::from_actor(e, retry(&state)))?;
    let users: Vec<_> = list
        .iter()
        .filter_map(|&(user, sim)| {
            state
                .engine
                .user_name(user)
                .map(|name| json!({"user_id": &*name, "similarity": sim}))
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"user_id": id.as_str(), "users": users})))
}

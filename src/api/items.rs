//! `/v1/items/{id}`: item (goal) metadata, and `/v1/items/{id}/similar-items`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use momentum_actors::index::ItemMeta;

use crate::api::{path_id, require_admin};
use crate::error::Error;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/items/{id}")
            .route(web::put().to(put_item))
            .route(web::get().to(get_item))
            .route(web::delete().to(delete_item)),
    )
    .service(web::resource("/v1/items/{id}/similar-items").route(web::get().to(similar_items)));
}

/// Limits on metadata so one item cannot take unbounded memory.
const MAX_TITLE: usize = 512;
const MAX_DESCRIPTION: usize = 16 * 1024;
const MAX_TAGS: usize = 64;
const MAX_TAG: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct ItemBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default, rename = "type")]
    item_type: Option<String>,
    #[serde(default)]
    difficulty: Option<f64>,
}
momentum_models::object_only!(ItemBody);

impl ItemBody {
    fn validate(self) -> Result<ItemMeta, Error> {
        let bad = |m: String| Error::bad("invalid_item", m);
        if self.title.chars().count() > MAX_TITLE {
            return Err(bad(format!("title is longer than {MAX_TITLE} characters")));
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return Err(bad(format!(
                "description is longer than {MAX_DESCRIPTION} characters"
            )));
        }
        if self.tags.len() > MAX_TAGS
            || self
                .tags
                .iter()
                .any(|t| t.is_empty() || t.chars().count() > MAX_TAG)
        {
            return Err(bad(format!(
                "at most {MAX_TAGS} tags of 1–{MAX_TAG} characters"
            )));
        }
        if let Some(t) = &self.item_type {
            if t.is_empty() || t.chars().count() > MAX_TAG {
                return Err(bad(format!("type must have 1–{MAX_TAG} characters")));
            }
        }
        let all_text = [&self.title, &self.description]
            .into_iter()
            .chain(self.tags.iter())
            .chain(self.item_type.iter());
        for text in all_text {
            if text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return Err(bad("text fields must not contain control characters".into()));
            }
        }
        let difficulty = match self.difficulty {
            Some(d) if !(0.0..=1.0).contains(&d) => {
                return Err(bad("difficulty must be in [0, 1]".into()))
            }
            d => d.map(|d| d as f32),
        };
        Ok(ItemMeta {
            title: self.title,
            description: self.description,
            tags: self.tags,
            item_type: self.item_type,
            difficulty,
        })
    }
}

fn item_json(id: &str, meta: &ItemMeta, users: usize) -> serde_json::Value {
    json!({
        "item_id": id,
        "title": meta.title,
        "description": meta.description,
        "tags": meta.tags,
        "type": meta.item_type,
        "difficulty": meta.difficulty,
        "users": users,
    })
}

async fn put_item(
    id: web::Path<String>,
    body: web::Json<ItemBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("item id", &id)?;
    let meta = body.into_inner().validate()?;
    let created = match &state.cluster {
        // Every node applies it from the items topic, this one before the answer.
        Some(cluster) => {
            let existed = state.engine.get_item(&id).is_ok();
            cluster.publish_item(&id, Some(&meta)).await?;
            !existed
        }
        None => state.journal.put_item(&id, meta.clone()).await?,
    };
    let users = state.engine.get_item(&id).map_or(0, |v| v.users);
    let body = item_json(&id, &meta, users);
    Ok(if created {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

async fn get_item(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("item id", &id)?;
    let view = state
        .engine
        .get_item(&id)
        .map_err(|e| Error::from_actor(e, state.settings.server.retry_after_secs))?;
    Ok(HttpResponse::Ok().json(item_json(&id, &view.meta, view.users)))
}

async fn delete_item(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("item id", &id)?;
    match &state.cluster {
        Some(cluster) => {
            // An unknown item is a 404 here, as in single-node mode; nothing is logged.
            state
                .engine
                .get_item(&id)
                .map_err(|e| Error::from_actor(e, state.settings.server.retry_after_secs))?;
            cluster.publish_item(&id, None).await?;
        }
        None => state.journal.delete_item(&id).await?,
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn similar_items(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("item id", &id)?;
    let list = state
        .engine
        .similar_items(&id)
        .await
        .map_err(|e| Error::from_actor(e, state.settings.server.retry_after_secs))?;
    let items: Vec<_> = list
        .iter()
        .filter_map(|&(item, sim)| {
            state
                .engine
                .item_name(item)
                .map(|name| json!({"item_id": &*name, "similarity": sim}))
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"item_id": id.as_str(), "items": items})))
}

//! The OpenAPI document, generated from the handlers' annotations and the wire types.
//! A committed copy (`openapi.json`) is checked for drift by a test.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::resources::{events, jobs, ops, queues, tenants, webhooks, worker};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vow API", version = "1", description = "Durable, multi-tenant jobs: enqueue, lease, complete, and be told when they are done."),
    paths(
        jobs::enqueue, jobs::enqueue_batch, jobs::get, jobs::list, jobs::events, jobs::wait,
        jobs::cancel, jobs::retry,
        worker::lease, worker::heartbeat, worker::complete, worker::fail, worker::acks,
        events::stream,
        queues::list, queues::get, queues::patch,
        tenants::create, tenants::list, tenants::key_create, tenants::key_list, tenants::key_revoke,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete,
        webhooks::rotate_secret, webhooks::deliveries, webhooks::job_deliveries,
        webhooks::delivery_get, webhooks::delivery_retry, webhooks::callback_secret,
        ops::healthz, ops::readyz,
    ),
    components(schemas(vow_core::api::Problem, vow_core::notice::NoticeBody)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

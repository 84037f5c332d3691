//! The OpenAPI document of the admin API, served at `/openapi.json`. Written by hand and
//! kept beside the routes; the API test checks every route is listed.

use axum::Json;

pub(super) async fn document() -> Json<serde_json::Value> {
    Json(spec())
}

fn op(summary: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "x-flotilla-scope": scope,
        "responses": {"200": {"description": "OK"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}
    })
}

pub fn spec() -> serde_json::Value {
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Flotilla hub admin API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}}
        },
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (no token)", "responses": {"200": {"description": "text"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/api/v1/root": {"get": op("Newest signed root metadata", "read")},
            "/api/v1/models": {"get": op("List models with version counts and aliases", "read")},
            "/api/v1/models/{model}": {"get": op("A model: versions, aliases, alias history", "read")},
            "/api/v1/models/{model}/versions": {"post": op("Push an ONNX file (body); query metric.NAME, tag.NAME, lineage.NAME, features (comma-separated names of the feature input's columns), categorical, feature_input, predictions (outputs that are predictions). 201 new, 200 same content already registered, 422 not loadable", "operator")},
            "/api/v1/models/{model}/versions/{version}": {"get": op("A version by number or alias", "read")},
            "/api/v1/models/{model}/versions/{version}/manifest": {"get": op("The version's signed manifest envelope", "read")},
            "/api/v1/models/{model}/versions/{version}/retire": {"post": op("Retire a version", "operator")},
            "/api/v1/models/{model}/quality-gate": {
                "get": op("The model's promotion quality gate", "read"),
                "put": op("Set the quality gate: body {\"rules\": [\"auc >= production.auc + 0.005\", ...], \"baseline_alias\": \"production\", \"auto_rollout\": {rollout spec without model and version}}; new versions that fail it are retired, passing ones may start a rollout", "operator")
            },
            "/api/v1/models/{model}/aliases/{alias}": {
                "put": op("Point an alias at a version: body {\"version\": N or \"alias\"}", "operator"),
                "delete": op("Remove an alias", "operator")
            },
            "/api/v1/enrollment-tokens": {"post": op("Create a one-time enrollment token: body {\"labels\": {..}, \"ttl_seconds\": N}", "operator")},
            "/api/v1/audit": {"get": op("The newest 200 audit log entries", "read")},
            "/api/v1/roots/{version}": {"get": {"summary": "Signed root metadata by version (public; agents walk the chain)", "responses": {"200": {"description": "envelope"}, "404": {"$ref": "#/components/responses/Error"}}}},
            "/api/v1/keys/rotate": {"post": op("Rotate the signing key: root metadata N+1, every manifest and desired state re-signed and republished; 409 when the root key is offline", "operator")},
            "/api/v1/enroll": {"post": {"summary": "Device enrollment with a one-time token (no admin token): body EnrollRequest", "responses": {"200": {"description": "EnrollResponse"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}}},
            "/api/v1/deployments": {"post": op("Set a model version (or alias) as desired on devices matching a label selector: body {\"model\", \"version\", \"selector\"}", "operator")},
            "/api/v1/devices": {"get": op("Enrolled devices: labels, hardware, online, last seen, serving versions, last install outcomes", "read")},
            "/api/v1/devices/{id}": {"get": op("One device with its desired state", "read")},
            "/api/v1/rollouts": {
                "post": op("Start a rollout: body the rollout spec (docs/rollouts.md) as JSON; 201 with the rollout, 400 bad spec or no targets, 404 unknown version, 409 retired version or a rollout of the model in progress", "operator"),
                "get": op("Every rollout, newest first: phase, wave, installs, reason, gate verdicts", "read")
            },
            "/api/v1/rollouts/{id}": {"get": op("One rollout: phase, wave sizes, devices told, installed, failed, restored, reason, gate verdicts, spec, controller state", "read")},
            "/api/v1/rollouts/{id}/{action}": {"post": op("Operator command: pause, resume, approve, abort, rollback, promote; 409 when the rollout's phase does not allow it", "operator")},
            "/api/v1/events": {"get": op("The event log (drift_alert, drift_cleared, rollout.*, quality_gate.*, trigger.*): query model, after (event id), limit", "read")},
            "/api/v1/models/{model}/trigger": {
                "get": op("The model's retraining trigger rule (webhook secret not shown); 404 when it has none", "read"),
                "put": op("Set the retraining trigger rule: body the rule (docs/triggers.md) as JSON; 400 with the reason when invalid", "operator"),
                "delete": op("Remove the model's trigger rule", "operator")
            },
            "/api/v1/models/{model}/trigger/fire": {"post": op("Fire the trigger now: body {\"note\": \"...\"} (optional); 201 with the run, 409 while a run is in flight", "operator")},
            "/api/v1/triggers": {"get": op("Trigger runs, newest first: query model, limit (default 100)", "read")},
            "/api/v1/triggers/{id}": {"get": op("One trigger run: reason, status, attempts, outcome, payload", "read")},
            "/api/v1/models/{model}/drift": {"get": op("Drift report of a fleet slice: query version (number or alias; default newest), selector k=v,..., devices a,b, since/until (90s, 15m, 1h, 7d) or since_ms/until_ms, against reference|version:N", "read")},
            "/api/v1/models/{model}/health": {"get": op("Requests, errors by kind, error rate, latency p50/p90/p99 and spool losses per version: query selector, devices, since, until", "read")},
            "/api/v1/models/{model}/drift-thresholds": {
                "get": op("The model's drift thresholds", "read"),
                "put": op("Set drift thresholds: body {\"default\": {ks, js, wasserstein_sigma, psi_warn, psi_alert, min_rows}, \"features\": {NAME: {...}}, \"dataset_share\": 0.5}", "operator")
            },
            "/api/v1/models/{model}/versions/{version}/reference": {
                "get": op("Summary of the version's reference profile", "read"),
                "put": op("Store a reference profile set (binary, as `flotilla model push --reference` builds it); 422 when it lacks the version's features", "operator")
            },
            "/api/v1/models/{model}/versions/{version}/reference/features/{feature}": {"get": op("One reference sketch in the DataSketches binary format (header x-datasketches-type)", "read")},
            "/api/v1/models/{model}/versions/{version}/captures": {"get": op("Captured samples: query format=ndjson (default) or csv", "read")},
            "/api/v1/artifacts/{sha256}": {"get": {"summary": "A model file by content hash; supports Range: bytes=N- for resumed downloads", "responses": {"200": {"description": "the file"}, "206": {"description": "a range"}, "416": {"$ref": "#/components/responses/Error"}}}}
        }
    })
}

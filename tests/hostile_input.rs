//! Inputs that would cost the engine or the log more than they should are refused at the
//! edge with the documented error body, naming the field.

mod common;

use common::{expect_error, start_with};
use serde_json::{json, Value};

#[tokio::test]
async fn stop_takes_at_most_eight_strings_of_at_most_sixty_four_characters() {
    let ts = start_with(common::with_test_model).await;
    let admin = ts.admin_token().await;
    let infer = |stop: Value| {
        let (ts, admin) = (&ts, admin.clone());
        async move {
            ts.client
                .post(ts.at("/api/v1/inference"))
                .bearer_auth(admin)
                .json(&json!({"model": common::TEST_MODEL_ID, "prompt": "Hi", "max_tokens": 2, "stop": stop}))
                .send()
                .await
                .unwrap()
        }
    };
    let nine: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    for stop in [json!(nine), json!(["x".repeat(65)])] {
        let body = expect_error(infer(stop).await, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["error"]["details"]["field"], "stop", "{body}");
    }
    // The same bound holds for a model's defaults.
    let r = ts
        .client
        .patch(ts.at(&format!("/api/v1/models/{}", common::TEST_MODEL_ID)))
        .bearer_auth(&admin)
        .json(&json!({"defaults": {"stop": nine}}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "VALIDATION_ERROR").await;
    // At the bound it runs, and the event records the stop strings as digests only.
    let eight: Vec<String> = (0..8).map(|i| format!("{i}").repeat(64)).collect();
    assert_eq!(infer(json!(eight)).await.status(), 200);
    let events = ts.events(&admin, "job.queued").await;
    let stop = &events[0]["payload"]["params"]["stop"];
    assert_eq!(stop.as_array().unwrap().len(), 8);
    assert!(
        stop[0]["sha256"].is_string() && stop[0]["text"].is_null(),
        "{stop}"
    );
    assert!(!events[0].to_string().contains(&eight[0]));
}

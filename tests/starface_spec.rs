//! The fake STARFACE in tests/starface_fake against the spec it imitates: every
//! JSON fixture in testdata/rest/ and every answer the fake builds (login
//! template, token, a user's number assignments, the 400 of a failed login)
//! validates against the excerpt of the STARFACE REST spec 6.7.0.22 in
//! testdata/rest/schema.json; the checker refuses the shapes the fake used to
//! invent, so a drift back would fail here.

#[path = "starface_fake/mod.rs"]
mod starface_fake;

use std::sync::Arc;

use serde_json::{json, Value};
use starface_fake::schema::Spec;
use starface_fake::{serve, testdata, Pbx, LOGIN_ID, PASSWORD};

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(testdata().join("rest").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_fixture_validates_against_the_spec() {
    let spec = Spec::load();
    assert_eq!(spec.version, "6.7.0.22");
    let mut checked = 0;
    for entry in std::fs::read_dir(testdata().join("rest")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let errs = match name.as_str() {
            "schema.json" => continue,
            "users.json" => spec.check_list("User", &fixture(&name)),
            "groups.json" => spec.check_list("GroupListItem", &fixture(&name)),
            "phonenumbers.json" => spec.check_list("PhoneNumber", &fixture(&name)),
            n if n.starts_with("group_") => spec.check("Group", &fixture(&name)),
            other => panic!("testdata/rest/{other}: which spec definition is it?"),
        };
        assert!(errs.is_empty(), "{name}: {errs:#?}");
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn the_checker_refuses_invented_shapes() {
    let spec = Spec::load();
    // A group id as integer, numbers with invented fields.
    let group = json!({"id": 100, "groupId": 7, "name": "Sales",
        "assignableNumbers": [{"id": 50, "number": "600", "type": "INTERNAL", "assigned": true}]});
    let errs = spec.check("Group", &group);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    // A FAX type, a fax account field, null where the spec has a string.
    let number = json!([{"id": 25, "number": "12345999", "type": "FAX", "exitCode": null,
        "assignedFaxAccountId": 9}]);
    let errs = spec.check_list("PhoneNumber", &number);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    // A user without the required e-mail field.
    let user =
        json!([{"id": 1, "login": "anna", "firstName": "A", "familyName": "B", "language": "de"}]);
    assert_eq!(spec.check_list("User", &user).len(), 1);
}

#[tokio::test]
async fn the_fakes_own_answers_validate_against_the_spec() {
    let spec = Spec::load();
    let pbx = Arc::new(Pbx::default());
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/rest");
    let template: Value = http
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec.check("Login", &template), Vec::<String>::new());
    let nonce = template["nonce"].as_str().unwrap();
    let secret = callrec::policy::rest::login_secret("Internal", LOGIN_ID, nonce, PASSWORD);
    let login = json!({"loginType": "Internal", "nonce": nonce, "secret": secret});
    assert_eq!(spec.check("Login", &login), Vec::<String>::new());
    let resp = http
        .post(format!("{base}/login"))
        .header("X-Version", "2")
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let token: Value = resp.json().await.unwrap();
    assert_eq!(spec.check("AuthToken", &token), Vec::<String>::new());
    let token = token["token"].as_str().unwrap().to_string();
    for (path, def) in [
        ("/users", "User"),
        ("/groups", "GroupListItem"),
        ("/phonenumbers", "PhoneNumber"),
        (
            "/users/1/phonenumberconfig/phonenumbers/",
            "PhoneNumberAssignment",
        ),
    ] {
        let resp = http
            .get(format!("{base}{path}"))
            .header("X-Version", "2")
            .header("authToken", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert!(!v.as_array().unwrap().is_empty(), "{path}");
        assert_eq!(spec.check_list(def, &v), Vec::<String>::new(), "{path}");
    }
    let group: Value = http
        .get(format!("{base}/groups/100"))
        .header("X-Version", "2")
        .header("authToken", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec.check("Group", &group), Vec::<String>::new());
    // A failed login: 400 with the AuthToken body the spec names.
    let again: Value = http
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bad = json!({"loginType": "Internal", "nonce": again["nonce"], "secret": "0001:wrong"});
    let resp = http
        .post(format!("{base}/login"))
        .header("X-Version", "2")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(spec.check("AuthToken", &body), Vec::<String>::new());
    assert_eq!(pbx.violations(), Vec::<String>::new());
}

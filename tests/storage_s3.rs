//! S3 targets against moto's S3-compatible server (`moto_server` from PyPI's
//! `moto[server]`, installed by deploy/test.sh) on loopback, with request signing
//! enforced (`INITIAL_NO_AUTH_ACTION_COUNT`): the test creates an IAM user, its
//! policy and access key and the bucket with boto3, then callrec uploads. The bytes
//! are read back through the server with boto3 (an independent S3 client) into a
//! folder, compared with the local files and checked with `shasum -a 256 -c`.
//! Deleting a set (retention) leaves none of its objects for boto3 to fetch. The web
//! console plays a set only the bucket holds and refuses one changed there.

mod common;
mod storage_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::{ObjectTarget, Secrets, Target, TargetError, TargetSecret, UploadSet};
use storage_support::outage::{target_down_then_back, Outage};
use storage_support::{assert_delivered, fast_spool, free_port, make_sets, run, Daemon, MadeSet};

const BUCKET: &str = "recordings";

/// Finds `program` on PATH (pip installs outside the usual system folders).
fn on_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{program} is not on PATH; run deploy/test.sh, which installs moto[server] from PyPI")
        })
}

const SETUP: &str = r#"
import boto3, json, sys
ep = sys.argv[1]
def client(kind, key="setup", secret="setup"):
    return boto3.client(kind, endpoint_url=ep, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)
iam = client("iam")
iam.create_user(UserName="callrec")
iam.put_user_policy(UserName="callrec", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
k = iam.create_access_key(UserName="callrec")["AccessKey"]
client("s3", k["AccessKeyId"], k["SecretAccessKey"]).create_bucket(Bucket=sys.argv[2])
print(k["AccessKeyId"], k["SecretAccessKey"])
"#;

const FETCH: &str = r#"
import boto3, os, sys
ep, key, secret, bucket, prefix, out = sys.argv[1:7]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  aws_access_key_id=key, aws_secret_access_key=secret)
os.makedirs(out, exist_ok=True)
for name in sys.argv[7:]:
    o = s3.get_object(Bucket=bucket, Key=prefix + name)
    with open(os.path.join(out, name), "wb") as f:
        f.write(o["Body"].read())
    print(prefix + name, o["ContentLength"])
"#;

const OBJECT: &str = r#"
import boto3, sys
ep, key, secret, bucket, op, arg = sys.argv[1:7]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  aws_access_key_id=key, aws_secret_access_key=secret)
if op == "list":
    # No Prefix parameter: moto checks the signature of an encoded "/" in it wrongly.
    for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if o["Key"].startswith(arg):
            print(o["Key"])
elif op == "get":
    sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=arg)["Body"].read())
elif op == "put":
    s3.put_object(Bucket=bucket, Key=arg, Body=sys.stdin.buffer.read())
"#;

/// moto's server with signing enforced, a user with an access key, and the bucket.
struct Moto {
    daemon: Daemon,
    endpoint: String,
    key_id: String,
    secret_key: String,
    work: PathBuf,
}

impl Moto {
    fn start(work: &Path) -> Moto {
        let moto = on_path("moto_server");
        let port = free_port();
        let mut cmd = Command::new(moto);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The first three requests (IAM user, policy, key) go unsigned; then every
            // request must be signed with a known key.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        let daemon = Daemon::start("moto_server", cmd, work.join("moto.log"), port);
        let endpoint = format!("http://127.0.0.1:{port}");
        std::fs::write(work.join("setup.py"), SETUP).unwrap();
        std::fs::write(work.join("fetch.py"), FETCH).unwrap();
        std::fs::write(work.join("object.py"), OBJECT).unwrap();
        let out = run(Command::new(on_path("python3"))
            .arg(work.join("setup.py"))
            .args([&endpoint, BUCKET]));
        let mut it = out.split_whitespace();
        let key_id = it.next().unwrap().to_string();
        let secret_key = it.next().unwrap().to_string();
        Moto {
            daemon,
            endpoint,
            key_id,
            secret_key,
            work: work.to_path_buf(),
        }
    }

    fn secret(&self, secret_key: &str) -> TargetSecret {
        let mut s = TargetSecret::default();
        s.cloud.endpoint = Some(self.endpoint.clone());
        s.cloud.region = Some("us-east-1".into());
        s.cloud.access_key_id = Some(self.key_id.clone());
        s.cloud.secret_access_key = Some(secret_key.into());
        s
    }

    /// Downloads the objects `prefix/name` through the server into a new folder.
    fn fetch(&self, prefix: &str, names: &[&str], tag: &str) -> PathBuf {
        let out = self.work.join(format!("fetched-{tag}"));
        run(Command::new(on_path("python3"))
            .arg(self.work.join("fetch.py"))
            .args([
                &self.endpoint,
                &self.key_id,
                &self.secret_key,
                BUCKET,
                &format!("{prefix}/"),
            ])
            .arg(&out)
            .args(names));
        out
    }

    /// Lists the keys below `prefix`, reads or replaces one object (`op` list|get|put).
    fn object(&self, op: &str, arg: &str, input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new(on_path("python3"))
            .arg(self.work.join("object.py"))
            .args([
                &self.endpoint,
                &self.key_id,
                &self.secret_key,
                BUCKET,
                op,
                arg,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "object.py {op} {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// The file names of a made set.
fn names(m: &storage_support::MadeSet) -> Vec<&str> {
    m.contents.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_delivers_byte_identical_sets_through_the_spool_into_templated_prefixes() {
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start(work.path());
    let made = make_sets(work.path(), 2);
    let url = format!("s3://{BUCKET}/calls/$Y/$M");
    let mut secrets = Secrets::new();
    secrets.insert(url.clone(), moto.secret(&moto.secret_key));
    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), secrets, None).unwrap();
    for m in &made {
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    }
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "not delivered: {:?}; attempts {:?}; moto: {}",
        spool.pending(),
        db.attempts(&made[0].set.base_name),
        moto.daemon.log_text()
    );
    for m in &made {
        let fetched = moto.fetch("calls/2026/03", &names(m), &m.set.base_name);
        assert_delivered(&fetched, m);
    }

    // Retention: set 0 is deleted from the bucket, set 1 stays.
    let target = ObjectTarget::from_url(&url, moto.secret(&moto.secret_key)).unwrap();
    target
        .delete(&UploadSet::by_name(&made[0].set.base_name))
        .await
        .unwrap();
    for name in names(&made[0]) {
        let gone = Command::new(on_path("python3"))
            .arg(moto.work.join("fetch.py"))
            .args([
                &moto.endpoint,
                &moto.key_id,
                &moto.secret_key,
                BUCKET,
                "calls/2026/03/",
            ])
            .arg(moto.work.join(format!("after-delete-{name}")))
            .arg(name)
            .output()
            .unwrap();
        assert!(
            !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NoSuchKey"),
            "{name} still in the bucket: {}",
            String::from_utf8_lossy(&gone.stderr)
        );
    }
    let fetched = moto.fetch("calls/2026/03", &names(&made[1]), "kept");
    assert_delivered(&fetched, &made[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_large_file_goes_up_in_parts_and_arrives_whole() {
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start(work.path());
    let dir = work.path().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let base = "20260301_101500_out_200_4930123_cafe";
    let big: Vec<u8> = (0..(19 * 1024 * 1024 + 777u32))
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let path = dir.join(format!("{base}.wav"));
    std::fs::write(&path, &big).unwrap();
    let target =
        ObjectTarget::from_url(&format!("s3://{BUCKET}/big"), moto.secret(&moto.secret_key))
            .unwrap();
    target
        .put(&UploadSet::new(base, vec![path.clone()]))
        .await
        .unwrap_or_else(|e| panic!("{e}; moto: {}", moto.daemon.log_text()));
    let name = format!("{base}.wav");
    let fetched = moto.fetch("big", &[&name], "big");
    let got = std::fs::read(fetched.join(format!("{base}.wav"))).unwrap();
    assert!(got == big, "{} bytes back, {} sent", got.len(), big.len());
    // Sent as a multipart upload (8 MiB parts), visible in the server's request log.
    let log = moto.daemon.log_text();
    assert!(
        log.contains("uploads"),
        "no multipart upload in the log: {log}"
    );
    assert!(log.matches("partNumber=").count() >= 3, "{log}");
    // Again (a retry after a lost answer): the object is read back, found identical,
    // and not sent a second time.
    let parts = log.matches("partNumber=").count();
    target
        .put(&UploadSet::new(base, vec![path.clone()]))
        .await
        .unwrap();
    let log = moto.daemon.log_text();
    assert_eq!(
        log.matches("partNumber=").count(),
        parts,
        "sent again: {log}"
    );
    assert!(log.contains("GET /recordings/big/"), "read back: {log}");
}

/// The bucket with the spool holding a wrong secret key; fixed by a restart
/// with the right one.
struct WrongKey<'a> {
    moto: &'a Moto,
}

impl Outage for WrongKey<'_> {
    fn url(&self) -> String {
        format!("s3://{BUCKET}/k/$Y")
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::new();
        secrets.insert(self.url(), self.moto.secret("not-the-secret-key"));
        secrets
    }

    fn error_says(&self) -> Vec<String> {
        vec!["login refused".into(), "secret_access_key".into()]
    }

    fn error_hides(&self) -> Vec<String> {
        vec!["not-the-secret-key".into()]
    }

    fn up(&mut self) -> Option<Secrets> {
        let mut secrets = Secrets::new();
        secrets.insert(self.url(), self.moto.secret(&self.moto.secret_key));
        Some(secrets)
    }

    fn read_back(&self, _made: &MadeSet, name: &str) -> Option<Vec<u8>> {
        let key = format!("k/2026/{name}");
        let listed = String::from_utf8(self.moto.object("list", &key, b"")).unwrap();
        listed
            .lines()
            .any(|k| k == key)
            .then(|| self.moto.object("get", &key, b""))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_key_or_missing_bucket_is_a_clear_error_and_the_set_stays_until_fixed() {
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start(work.path());
    let made = make_sets(&work.path().join("missing"), 1);
    let m = &made[0];

    // A bucket that does not exist.
    let set = UploadSet::from_sealed(&m.set);
    let err = ObjectTarget::from_url("s3://no-such-bucket/x", moto.secret(&moto.secret_key))
        .unwrap()
        .put(&set)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TargetError::MissingShare { .. }) && err.to_string().contains("bucket"),
        "{err}"
    );

    let mut target = WrongKey { moto: &moto };
    let run = target_down_then_back(work.path(), &mut target).await;
    assert_delivered(&moto.fetch("k/2026", &names(&run.made), "fixed"), &run.made);
}

/// The web console plays a set that only the bucket holds: fetched on demand,
/// verified against the instance certificate, the bucket's WAV served whole and by
/// range; after the WAV is changed in the bucket a new start refuses to play it.
#[test]
fn console_plays_a_set_only_the_s3_bucket_holds() {
    use common::console::{assert_plays, assert_refuses, record_one_remote_set, start_with_config};
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start(work.path());
    let config = work.path().join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.offsite]\nurl = \"s3://{BUCKET}/console\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\n[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"offsite\"]\n",
            moto.endpoint, moto.key_id, moto.secret_key
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let (proxy, id) = record_one_remote_set(&data, &config, || {
        let keys = String::from_utf8(moto.object("list", "console/", b"")).unwrap();
        keys.lines()
            .find_map(|k| k.strip_suffix(".sha256.SHA256withRSA.sig"))
            .map(|k| k.trim_start_matches("console/").to_string())
    });
    let key = format!("console/{id}.wav");
    let wav = moto.object("get", &key, b"");
    assert_plays(&proxy, &data, &id, &wav);

    drop(proxy);
    let mut changed = wav.clone();
    let n = changed.len();
    changed[n - 7] ^= 0x5a;
    moto.object("put", &key, &changed);
    let proxy = start_with_config(&data, &config);
    assert_refuses(&proxy, &data, &id);
}

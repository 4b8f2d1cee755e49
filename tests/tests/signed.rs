//! Requests whose body a signature covers (AWS SigV4, as botocore signs a
//! Bedrock call) through the redirect: forwarded untouched when nothing is
//! to be redacted, and refused — never rewritten and sent with a signature
//! that no longer matches — when the policy would redact them.

use std::process::Command;

use modelgate_tests::{
    Agent, AgentSpec, TestCgroup, require_root,
    standin::{ModelServer, Pki, by_pid, run_checked, test_python},
};
use serde_json::Value;

const BEDROCK: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// botocore's own bedrock-runtime client: argv TEXT [ENDPOINT]; prints
/// `OK <reply> <input tokens>` or `ERR <status> <error code>`.
const CONVERSE: &str = r#"
import sys, botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError
client = botocore.session.get_session().create_client(
    "bedrock-runtime", region_name="us-east-1",
    aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key=sys.argv[2],
    endpoint_url=sys.argv[3] if len(sys.argv) > 3 else None,
    config=Config(retries={"max_attempts": 1, "mode": "standard"}))
try:
    r = client.converse(modelId=sys.argv[4] if len(sys.argv) > 4 else "anthropic.claude-3-haiku-20240307-v1:0",
                        messages=[{"role": "user", "content": [{"text": sys.argv[1]}]}])
    print("OK", r["output"]["message"]["content"][0]["text"], r["usage"]["inputTokens"])
except ClientError as e:
    print("ERR", e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"].get("Code"))
"#;

/// The same signed request with its body changed after signing, sent
/// straight to `argv[1]`: the stand-in must refuse it, or it proves nothing.
const TAMPERED: &str = r#"
import sys, json, socket, ssl, http.client
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
host, ip, secret, ca = sys.argv[1:5]
path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
body = json.dumps({"messages": [{"role": "user", "content": [{"text": "mail jane@example.com"}]}]})
for label, sent in [("untouched", body), ("tampered", body.replace("jane@example.com", "[REDACTED:email]"))]:
    req = AWSRequest(method="POST", url=f"https://{host}{path}", data=body,
                     headers={"content-type": "application/json"})
    SigV4Auth(Credentials("AKIDEXAMPLE", secret), "bedrock", "us-east-1").add_auth(req)
    tls = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPConnection(host)
    conn.sock = tls.wrap_socket(socket.create_connection((ip, 443)), server_hostname=host)
    headers = dict(req.headers.items())
    headers["Host"] = host
    conn.request("POST", path, body=sent.encode(), headers=headers)
    print(label, conn.getresponse().status)
"#;

#[test]
fn a_sigv4_signed_bedrock_call_is_forwarded_untouched_or_refused_never_resigned_wrong() {
    require_root();
    let python = test_python("botocore");
    let ip = "127.0.0.103";
    let cgroup = TestCgroup::new("signed");
    let pki = Pki::new(&[BEDROCK]);
    let server = ModelServer::signed(&pki, ip, 443, SECRET);

    // The stand-in verifies: the signed body passes, the same body
    // rewritten after signing is refused.
    let tamper = Command::new(&python)
        .args(["-c", TAMPERED, BEDROCK, ip, SECRET])
        .arg(&pki.ca)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&tamper.stdout);
    assert!(
        said.contains("untouched 200") && said.contains("tampered 403"),
        "the stand-in checks signatures: {said}{}",
        String::from_utf8_lossy(&tamper.stderr)
    );
    let checked = server.requests().len();

    let endpoints = format!(
        "providers:\n  - name: bedrock\n    api: bedrock\n    hosts: [{BEDROCK}]\n    addresses: [{ip}]\n"
    );
    // One rule for every provider: bodies of the others are redacted; a
    // signed one cannot be.
    let policy = "default_action: redirect\nrules:\n  - name: protect\n    action: redirect\n    controls:\n      data: {pii: redact}\n";
    let upstream_ca = pki.ca.display().to_string();
    let args = ["--proxy-port", "0", "--upstream-ca", upstream_ca.as_str()];
    let mut spec = AgentSpec::new(&cgroup, &endpoints, policy);
    spec.extra_args = &args;
    let agent = Agent::start(spec);

    let hosts = pki.dir.path().join("client-hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{ip} {BEDROCK}\n")).unwrap();
    let converse = |text: &str| {
        let mut cmd = cgroup.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&hosts)
            .arg(&python)
            .args(["-c", CONVERSE, text, SECRET])
            .env("AWS_CA_BUNDLE", agent.ca());
        run_checked(&mut cmd, "botocore's converse")
    };

    // Nothing to redact: the signed request reaches the upstream as signed.
    let (pid, out) = converse("Say hello");
    assert!(out.contains("OK Hello from Bedrock. 9"), "{out}");
    let record = agent.wait_for_audit("the clean call", by_pid(pid));
    assert_eq!(record["decision"], "redirect", "{record:#}");
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["gen_ai.request.model"], MODEL, "{record:#}");
    assert_eq!(record["status"], 200, "{record:#}");

    // An address the rule redacts: refused by the proxy with a reason,
    // not rewritten and sent on to fail the signature check upstream.
    let (pid, out) = converse("mail jane@example.com about it");
    assert!(out.starts_with("ERR 403"), "{out}");
    let record = agent.wait_for_audit("the refused call", by_pid(pid));
    assert_eq!(record["outcome"], "data_blocked", "{record:#}");
    assert_eq!(record["status"], 403, "{record:#}");
    assert!(
        record
            .get("redacted")
            .is_none_or(|r| r.as_object().is_none_or(|o| o.is_empty())),
        "nothing was redacted: {record:#}"
    );
    let error = record["error"].as_str().unwrap_or("");
    assert!(error.contains("signed (AWS SigV4)"), "{record:#}");
    let findings = record["findings"].to_string();
    assert!(findings.contains("email"), "{record:#}");

    let seen: Vec<Value> = server.requests().into_iter().skip(checked).collect();
    assert_eq!(
        seen.len(),
        1,
        "only the clean call went upstream: {seen:#?}"
    );
    assert!(seen[0]["body"].as_str().unwrap().contains("Say hello"));
}

//! Identity (protocol v3) in the bench: `tokens` signs one token per client
//! ahead of a run (RS256 signing costs about a millisecond, which must not
//! fall inside the connect phase), and `verify` times roomchat's own token
//! check, `roomchat::auth::Verifier::verify`, the call every authentication
//! makes once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use roomchat::auth::{unix_now, Verifier};
use roomchat::config::Secret;
use roomchat::Config;

use crate::report;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct TokensArgs {
    #[arg(long, value_enum)]
    pub alg: Alg,
    /// HS256: a file holding the secret (a trailing newline is not part of
    /// it). RS256, ES256: the private key in PEM.
    #[arg(long)]
    pub key: PathBuf,
    /// Tokens: line i is client i's, with `sub` and `name` "c<i>", the
    /// names the `conns` scenario joins with.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Seconds until the tokens expire.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Where to write them, one per line.
    #[arg(long)]
    pub out: PathBuf,
}

fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn encoding_key(alg: Alg, key: &Path) -> Result<EncodingKey, String> {
    let bad = |e: jsonwebtoken::errors::Error| format!("{}: {e}", key.display());
    match alg {
        Alg::Hs256 => Ok(EncodingKey::from_secret(read_secret(key)?.as_bytes())),
        Alg::Rs256 | Alg::Es256 => {
            let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
            if alg == Alg::Rs256 {
                EncodingKey::from_rsa_pem(&pem).map_err(bad)
            } else {
                EncodingKey::from_ec_pem(&pem).map_err(bad)
            }
        }
    }
}

fn jwt_alg(alg: Alg) -> Algorithm {
    match alg {
        Alg::Hs256 => Algorithm::HS256,
        Alg::Rs256 => Algorithm::RS256,
        Alg::Es256 => Algorithm::ES256,
    }
}

/// Signs a token for user `sub` (also its name), valid for `ttl` seconds.
fn sign(alg: Alg, key: &EncodingKey, sub: &str, ttl: u64) -> Result<String, String> {
    let now = unix_now();
    let claims = json!({"sub": sub, "name": sub, "iat": now, "exp": now + ttl});
    jsonwebtoken::encode(&Header::new(jwt_alg(alg)), &claims, key).map_err(|e| e.to_string())
}

/// `roomchat-bench tokens`: writes `count` tokens, one per line.
pub fn write_tokens(a: &TokensArgs) -> Result<bool, String> {
    let key = encoding_key(a.alg, &a.key)?;
    let started = Instant::now();
    let mut text = String::with_capacity(a.count * 300);
    for i in 0..a.count {
        text.push_str(&sign(a.alg, &key, &format!("c{i}"), a.ttl)?);
        text.push('\n');
    }
    std::fs::write(&a.out, text).map_err(|e| format!("{}: {e}", a.out.display()))?;
    eprintln!(
        "roomchat-bench: {} {} tokens in {:.1} s into {}",
        a.count,
        a.alg.name(),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(true)
}

/// The tokens of a `--tokens` file, line i for client i.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

#[derive(Args, Clone, Debug)]
pub struct VerifyArgs {
    /// A file holding the HMAC secret (HS256).
    #[arg(long)]
    pub hmac_secret: PathBuf,
    /// RSA key pair in PEM (RS256): the private key signs the token, the
    /// public one is what the server's `--auth-public-key` would read.
    #[arg(long)]
    pub rsa_private: PathBuf,
    #[arg(long)]
    pub rsa_public: PathBuf,
    /// P-256 key pair in PEM (ES256).
    #[arg(long)]
    pub ec_private: PathBuf,
    #[arg(long)]
    pub ec_public: PathBuf,
    /// Verifications per batch.
    #[arg(long, default_value_t = 2000)]
    pub count: u32,
    /// Batches; the figure is the median batch's time per verification.
    #[arg(long, default_value_t = 7)]
    pub batches: u32,
    /// Also append the JSON line to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Name of this run in the output.
    #[arg(long, default_value = "verify")]
    pub label: String,
}

/// `roomchat-bench verify`: µs per call of roomchat's `Verifier::verify`
/// for a valid token of each algorithm, in this process (one thread).
pub fn verify(a: &VerifyArgs) -> Result<bool, String> {
    let mut figures = serde_json::Map::new();
    let mut rows = Vec::new();
    for (alg, private, public) in [
        (Alg::Hs256, &a.hmac_secret, None),
        (Alg::Rs256, &a.rsa_private, Some(&a.rsa_public)),
        (Alg::Es256, &a.ec_private, Some(&a.ec_public)),
    ] {
        let config = match public {
            None => Config {
                auth_hmac_secret: Some(Secret::new(read_secret(private)?)),
                ..Config::default()
            },
            Some(p) => Config {
                auth_public_key: Some(p.clone()),
                ..Config::default()
            },
        };
        let verifier = Verifier::from_config(&config)
            .map_err(|e| e.to_string())?
            .ok_or("no key configured")?;
        let token = sign(alg, &encoding_key(alg, private)?, "c0", 3600)?;
        verifier
            .verify(&token)
            .map_err(|r| format!("{}: {}", alg.name(), r.message))?;
        let mut per_call = Vec::new();
        for _ in 0..a.batches.max(1) {
            let t = Instant::now();
            for _ in 0..a.count.max(1) {
                std::hint::black_box(verifier.verify(std::hint::black_box(&token)).is_ok());
            }
            per_call.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(a.count.max(1)));
        }
        per_call.sort_by(f64::total_cmp);
        let median = per_call[per_call.len() / 2];
        rows.push((
            alg.name(),
            format!("{median:.2} µs ({} bytes)", token.len()),
        ));
        figures.insert(
            alg.name().to_lowercase(),
            json!((median * 100.0).round() / 100.0),
        );
        figures.insert(
            format!("{}_bytes", alg.name().to_lowercase()),
            json!(token.len()),
        );
    }
    let rows: Vec<(&str, String)> = rows.into_iter().collect();
    report::table(
        &format!("verify {} (µs per token, median batch)", a.label),
        &rows,
    );
    let mut line = json!({
        "scenario": "verify",
        "label": a.label,
        "server": "roomchat",
        "batches": a.batches,
        "per_batch": a.count,
        "cpus": {"bench": report::cpus_allowed(None)},
    });
    if let Some(o) = line.as_object_mut() {
        o.insert("verify_us".into(), figures.into());
    }
    report::emit(&line, a.json_out.as_deref()).map_err(|e| format!("writing results: {e}"))?;
    Ok(true)
}

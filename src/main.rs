//! `fhirlake`: the one entry point. Sets up logging, the runtime and configuration, then hands
//! over to the library crates (`mapper::pipeline` for ingest, `api` for serve).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e`, the same in the bundled
/// mimalloc 2 and 3 (`libmimalloc-sys` names no constant for it). `allocator_option_numbers`
/// pins the number.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc 3's `mi_option_page_reclaim_on_free` (also unnamed by `libmimalloc-sys`), pinned
/// by `allocator_option_numbers` like [`MI_OPTION_PURGE_DELAY`].
const MI_OPTION_PAGE_RECLAIM_ON_FREE: libmimalloc_sys::mi_option_t = 35;

/// Make the allocator give memory back to the system as a long-running server should.
///
/// Two defaults suit the batch `ingest` but not `serve`: mimalloc asks for transparent huge
/// pages, so a few live objects pin a whole 2 MiB page (a quarter of the server's resident
/// memory on the benchmark lake), and it returns freed pages only after a second and only
/// when the allocator is busy again, so the transient buffers of opening a snapshot stay
/// resident while the server idles. Serving turns both off (a `MIMALLOC_PURGE_DELAY` in the
/// environment still wins); the load benchmark shows no change in throughput.
fn tune_allocator_for_serving() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    set_option(MI_OPTION_PURGE_DELAY, 0, &["MIMALLOC_PURGE_DELAY"]);
}

/// Keep freed memory for reuse during an ingest run instead of returning it to the system,
/// and let the threads that free a run's rows reuse the pages those rows were in.
///
/// An ingest allocates and frees a chunk's documents and Parquet buffers over and over; each
/// time mimalloc purged them, the kernel had to zero fresh pages for the next chunk (12 to
/// 21 % of the run's samples in a profile). The run's memory is bounded by its chunking, so
/// holding on to the freed pages costs tens of MiB of peak RSS, not growth.
///
/// Most of a run's memory is freed by a thread other than the one that allocated it: mapping
/// threads build the documents, a writer thread frees them once written. When a page's owner
/// has moved on to other pages (the page is "abandoned"), mimalloc 3 by default lets a thread
/// that frees into it take it over only if the page came from that thread's own heap; with
/// `page_reclaim_on_free` at 1 any freeing thread takes the page over and allocates from it
/// next. On the 288 MB RIF carrier file that is about 5 % less CPU (3–4 % on the plain CSV
/// file, none on 837P; `bench/RESULTS.md`).
fn tune_allocator_for_ingest() {
    set_option(MI_OPTION_PURGE_DELAY, -1, &["MIMALLOC_PURGE_DELAY"]);
    set_option(
        MI_OPTION_PAGE_RECLAIM_ON_FREE,
        1,
        &[
            "MIMALLOC_PAGE_RECLAIM_ON_FREE",
            "MIMALLOC_ABANDONED_RECLAIM_ON_FREE",
        ],
    );
}

/// Set a mimalloc option unless the environment sets it (under any of `env`, its current and
/// legacy names).
fn set_option(option: libmimalloc_sys::mi_option_t, value: std::ffi::c_long, env: &[&str]) {
    if env.iter().all(|name| std::env::var_os(name).is_none()) {
        // SAFETY: setting an option is thread-safe in mimalloc.
        unsafe {
            libmimalloc_sys::mi_option_set(option, value);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "fhirlake",
    version,
    about = "Payer extracts → FHIR R4 (CARIN BB 2.1.0, PDex formulary 2.0.1) in a Parquet lake, served through a SMART-gated FHIR API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest extract files (CMS RIF, plain CSV, X12 837, formulary XML/JSON) into a new lake snapshot.
    Ingest(IngestArgs),
    /// Serve a lake through the FHIR API.
    Serve(ServeArgs),
    /// Ingest the bundled samples into a lake and serve it, printing example requests.
    Demo(DemoArgs),
    /// Print an access token signed by the embedded authorization server, for curl and scripts.
    Token(TokenArgs),
    /// Rotate the embedded authorization server's signing key (old public keys stay in the JWKS
    /// so tokens already issued keep working until they expire).
    RotateKey(RotateArgs),
    /// List the lake's snapshots, or roll back to one.
    Snapshots(SnapshotArgs),
    /// Write a deterministic synthetic extract: X12 837P/837I claims or a formulary XML extract.
    Generate(GenerateArgs),
    /// Write every resource of the current snapshot as NDJSON (one resource per line).
    Export {
        /// The lake directory.
        #[arg(long)]
        lake: PathBuf,
        /// Output file (`-` for standard output).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Print the argon2 hash of a secret (for clients.toml / members.toml).
    HashSecret {
        /// The secret (password or client secret).
        secret: String,
    },
}

#[derive(Args)]
struct IngestArgs {
    /// The lake directory (created if missing).
    #[arg(long)]
    lake: PathBuf,
    /// Files or folders to ingest; each file's layout is recognised from its content.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Read every delimited file with this mapping file instead of detecting the layout.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// The folder of mapping files.
    #[arg(long, env = "FHIRLAKE_MAPPINGS", default_value = "mappings")]
    mappings: PathBuf,
    /// Fail (exit status 3) when more than this share of records is rejected (0.0–1.0).
    #[arg(long, default_value_t = 1.0)]
    max_reject_rate: f64,
    /// Rows per table file the run writes (it holds at most about this many resources of a
    /// type in memory before writing them out) [default: 65536].
    #[arg(long)]
    file_rows: Option<usize>,
    /// MiB of rows the run holds in memory, all resource types together, before it writes the
    /// type holding most to a table file (an estimate of the rows' size; the process uses
    /// more) [default: 160].
    #[arg(long)]
    buffer_mib: Option<usize>,
}

#[derive(Args, Clone)]
struct AuthArgs {
    /// Folder with the embedded authorization server's clients.toml and members.toml.
    #[arg(long, env = "FHIRLAKE_AUTH_CONFIG", default_value = "samples/auth")]
    auth_config: PathBuf,
    /// Where the embedded server keeps its signing keys and revocations [default: LAKE/_auth].
    #[arg(long)]
    auth_state: Option<PathBuf>,
    /// Use an external OpenID provider (its issuer URL) instead of the embedded server.
    #[arg(long)]
    issuer: Option<String>,
    /// Expected token audience with --issuer [default: the FHIR base URL].
    #[arg(long)]
    audience: Option<String>,
    /// Token claim naming the patient(s), with --issuer.
    #[arg(long, default_value = "patient")]
    patient_claim: String,
}

#[derive(Args)]
struct ServeArgs {
    /// The lake directory.
    #[arg(long)]
    lake: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Path the FHIR API is served under.
    #[arg(long, default_value = "/fhir")]
    base_path: String,
    /// Public base URL, when behind a proxy [default: http://LISTEN/BASE_PATH].
    #[arg(long)]
    public_url: Option<String>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Serve member data without any token check. For local development only.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Append an audit record of every member-data access to this file (NDJSON).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Default page size.
    #[arg(long, default_value_t = 20)]
    default_count: usize,
    /// Largest page size.
    #[arg(long, default_value_t = 200)]
    max_count: usize,
}

#[derive(Args)]
struct DemoArgs {
    /// Lake directory for the demo.
    #[arg(long, default_value = "target/demo-lake")]
    lake: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The samples folder.
    #[arg(long, default_value = "samples")]
    samples: PathBuf,
}

#[derive(Args)]
struct TokenArgs {
    /// The patient the token is for.
    #[arg(long)]
    patient: String,
    /// Space-separated scopes.
    #[arg(long, default_value = "patient/*.rs")]
    scope: String,
    /// The client id the token names.
    #[arg(long, default_value = "fhirlake-cli")]
    client: String,
    /// The lake (for its default key folder LAKE/_auth).
    #[arg(long, default_value = "target/demo-lake")]
    lake: PathBuf,
    /// The FHIR base URL the token is for (its audience).
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    base_url: String,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Args)]
struct RotateArgs {
    /// The lake (for its default key folder LAKE/_auth).
    #[arg(long)]
    lake: PathBuf,
    /// The FHIR base URL tokens are issued for.
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    base_url: String,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Args)]
struct SnapshotArgs {
    /// The lake directory.
    #[arg(long)]
    lake: PathBuf,
    /// Make this snapshot current again.
    #[arg(long)]
    rollback: Option<String>,
    /// Delete all but the newest N snapshots (never the current one).
    #[arg(long)]
    keep: Option<usize>,
    /// Check the current snapshot's key index against its tables (exit status 1 when they
    /// disagree; the next run that touches that type then rebuilds its index from the table).
    #[arg(long)]
    verify: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Output file (X12 or formulary XML).
    #[arg(long, required_unless_present = "dataset")]
    out: Option<PathBuf>,
    /// Write a delimited dataset into this folder instead: rif/ (CMS RIF beneficiaries,
    /// carrier, inpatient, outpatient and Part D event claims, shaped on samples/rif) and
    /// plain/ (the plain CSV layout).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Members, with --dataset.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Claims per member, with --dataset.
    #[arg(long, default_value_t = 10)]
    claims_per_member: usize,
    /// Number of claims.
    #[arg(long, default_value_t = 1000)]
    claims: usize,
    /// 837I (institutional) instead of 837P.
    #[arg(long)]
    institutional: bool,
    /// Put every claim in one interchange and one functional group, in transaction sets of
    /// 5,000 claims, as large production files come (default: interchanges of 1,200 claims).
    #[arg(long)]
    single_interchange: bool,
    /// Write a formulary XML extract of this many formularies instead of claims.
    #[arg(long)]
    formularies: Option<u32>,
    /// Drugs per formulary, with --formularies.
    #[arg(long, default_value_t = 100)]
    drugs: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FHIRLAKE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        b.compact().init();
    } else {
        b.json().init();
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhirlake: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ingest(a) => {
            tune_allocator_for_ingest();
            ingest(&a)
        }
        Command::Serve(a) => {
            tune_allocator_for_serving();
            runtime()?.block_on(serve(a))
        }
        Command::Demo(a) => {
            tune_allocator_for_serving();
            runtime()?.block_on(demo(a))
        }
        Command::Token(a) => runtime()?.block_on(token(a)),
        Command::Snapshots(a) => snapshots(&a),
        Command::RotateKey(a) => runtime()?.block_on(async {
            let smart = smart_for(&a.auth, &a.lake, &a.base_url).await?;
            let kid = smart.rotate_signing_key()?;
            println!("new signing key {kid}");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Generate(a) => {
            if let Some(dir) = &a.dataset {
                return generate_dataset(dir, &a);
            }
            let out = a.out.clone().unwrap_or_default();
            let f = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(f);
            if let Some(formularies) = a.formularies {
                ingest::formulary::generate_extract(&mut w, formularies, a.drugs, a.seed)?;
                println!(
                    "wrote {} ({formularies} formularies x {} drugs)",
                    out.display(),
                    a.drugs
                );
                return Ok(ExitCode::SUCCESS);
            }
            let shape = if a.single_interchange {
                ingest::x12::Shape::single_interchange()
            } else {
                ingest::x12::Shape::default()
            };
            let n = ingest::x12::generate_837_shaped(
                &mut w,
                !a.institutional,
                a.claims,
                a.seed,
                shape,
            )?;
            println!("wrote {} ({n} bytes, {} claims)", out.display(), a.claims);
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { lake, out } => export(&lake, &out),
        Command::HashSecret { secret } => {
            println!("{}", api::smart::config::hash_secret(&secret)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn ingest(a: &IngestArgs) -> Result<ExitCode> {
    let opts = mapper::pipeline::Options {
        lake: a.lake.clone(),
        mappings: a.mappings.clone(),
        forced_mapping: a.mapping.clone(),
        progress: Some(progress_reporter()),
        file_rows: a.file_rows,
        buffer_bytes: a.buffer_mib.map(|m| m.saturating_mul(1 << 20)),
        memory_keys: None,
    };
    let lake = mapper::lake::Lake::new(&a.lake);
    let before = lake.current_name().ok().flatten();
    let report = match mapper::pipeline::run(&a.paths, &opts) {
        Ok(report) => report,
        Err(e) => {
            let after = lake.current_name().ok().flatten();
            let what = failed_run(&e, before.as_deref(), after.as_deref());
            return Err(anyhow::Error::new(e).context(what));
        }
    };
    print_report(&report);
    if report.reject_rate() > a.max_reject_rate {
        eprintln!(
            "fhirlake: reject rate {:.1}% is above --max-reject-rate {:.1}%",
            report.reject_rate() * 100.0,
            a.max_reject_rate * 100.0
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The start of a failed run's one-line message: what kind of failure (the disk is full,
/// permission denied, …) and what state the lake is in, which is what an operator paged at
/// night needs first. The error itself (file and OS message) follows it.
fn failed_run(e: &mapper::pipeline::RunError, before: Option<&str>, after: Option<&str>) -> String {
    use std::io::ErrorKind;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut kind = None;
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
            break;
        }
        cause = c.source();
    }
    let what = match kind {
        Some(ErrorKind::StorageFull | ErrorKind::QuotaExceeded) => {
            "the disk is full (free space, then run again)"
        }
        Some(ErrorKind::PermissionDenied) => {
            "permission denied (the user running fhirlake must be able to write the lake and read the inputs)"
        }
        Some(ErrorKind::ReadOnlyFilesystem) => "the file system is read-only",
        _ => "the run failed",
    };
    let lake = match (before, after) {
        (b, a) if b == a => match b {
            Some(name) => format!("nothing was published, {name} is still the current snapshot"),
            None => "nothing was published".to_string(),
        },
        (_, Some(name)) => format!("{name} was published before the failure"),
        (_, None) => "the lake has no current snapshot".to_string(),
    };
    format!("{what}; {lake}")
}

/// Progress of an ingest: bars per source on a terminal, JSON log lines otherwise.
fn progress_reporter() -> mapper::pipeline::ProgressFn {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::collections::HashMap;
    use std::sync::Mutex;
    if std::io::stderr().is_terminal() {
        let multi = MultiProgress::new();
        let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
        let style = ProgressStyle::with_template(
            "{prefix:30!} {bar:30} {bytes:>10}/{total_bytes:10} {msg} {bytes_per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        Arc::new(move |p: &mapper::pipeline::Progress<'_>| {
            let Ok(mut bars) = bars.lock() else { return };
            let bar = bars.entry(p.file.to_string()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(p.total_bytes));
                b.set_style(style.clone());
                let name = Path::new(p.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                b.set_prefix(name);
                b
            });
            bar.set_position(p.bytes.min(p.total_bytes));
            bar.set_message(format!("{} records", p.records));
            if p.done {
                bar.finish();
            }
        })
    } else {
        Arc::new(|p: &mapper::pipeline::Progress<'_>| {
            if p.done || p.records.is_multiple_of(4096 * 64) {
                tracing::info!(
                    file = p.file,
                    records = p.records,
                    bytes = p.bytes,
                    total_bytes = p.total_bytes,
                    done = p.done,
                    "ingest progress"
                );
            }
        })
    }
}

/// The run's summary on the terminal: per source what `report.json` holds — records read,
/// accepted, rejected, updated and cancelled, megabytes, seconds and records per second, then
/// the resources it produced per type and its rejects per reason.
fn print_report(r: &mapper::pipeline::RunReport) {
    println!("snapshot {} published ({:.2}s)", r.snapshot, r.seconds);
    let label = |s: &mapper::pipeline::SourceReport| {
        let name = Path::new(&s.file)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        format!("{name} [{}]", s.layout)
    };
    let width = r
        .sources
        .iter()
        .map(|s| label(s).len())
        .max()
        .unwrap_or(0)
        .max(24);
    let row = |name: &str, counts: [u64; 5], bytes: u64, seconds: f64| {
        let [read, accepted, rejected, updated, cancelled] = counts;
        let rate = if seconds > 0.0 {
            format!("{:.0}", read as f64 / seconds)
        } else {
            "-".to_string()
        };
        println!(
            "{name:<width$} {read:>9} {accepted:>9} {rejected:>9} {updated:>8} {cancelled:>9} {:>9.1} {seconds:>7.2} {rate:>10}",
            bytes as f64 / 1e6
        );
    };
    println!(
        "{:<width$} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7} {:>10}",
        "source", "read", "accepted", "rejected", "updated", "cancelled", "MB", "s", "records/s"
    );
    let pairs = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for s in &r.sources {
        let counts = [s.records_read, s.accepted, s.rejected, s.updates, s.cancels];
        row(&label(s), counts, s.bytes, s.seconds);
        if !s.resources.is_empty() {
            println!("    resources: {}", pairs(&s.resources));
        }
        if !s.rejects_by_reason.is_empty() {
            println!("    rejects: {}", pairs(&s.rejects_by_reason));
        }
        for n in &s.notices {
            println!("    notice: {n}");
        }
        if s.invalid_npis > 0 {
            println!(
                "    data quality: {} provider(s) without a valid NPI (e.g. {})",
                s.invalid_npis,
                s.invalid_npi_examples.join(", ")
            );
        }
    }
    let (updates, cancels, bytes) = r.sources.iter().fold((0, 0, 0), |(u, c, b), s| {
        (u + s.updates, c + s.cancels, b + s.bytes)
    });
    let counts = [r.records_read, r.accepted, r.rejected, updates, cancels];
    row("total", counts, bytes, r.seconds);
    if !r.rejects_by_reason.is_empty() {
        println!(
            "rejects by reason: {} (details: {})",
            pairs(&r.rejects_by_reason),
            r.rejects_file
        );
    }
    println!("lake tables: {}", pairs(&r.tables));
    let built: Vec<&str> = (r.merge.iter())
        .filter(|(_, s)| s.key_index_built)
        .map(|(t, _)| t.as_str())
        .collect();
    if !built.is_empty() {
        println!("key index built from the tables of: {}", built.join(", "));
    }
}

async fn smart_for(auth: &AuthArgs, lake: &Path, base_url: &str) -> Result<api::smart::Smart> {
    use api::smart::{AuthConfig, Smart};
    let cfg = match &auth.issuer {
        Some(issuer) => AuthConfig::external(
            issuer.clone(),
            auth.audience
                .clone()
                .unwrap_or_else(|| base_url.to_string()),
            auth.patient_claim.clone(),
        ),
        None => AuthConfig::embedded(
            auth.auth_state
                .clone()
                .unwrap_or_else(|| lake.join("_auth")),
            auth.auth_config.join("clients.toml"),
            auth.auth_config.join("members.toml"),
            base_url.to_string(),
        ),
    };
    Smart::new(cfg).await.context("setting up authorization")
}

async fn serve(a: ServeArgs) -> Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let base_path = format!("/{}", a.base_path.trim_matches('/'));
    let base_path = if base_path == "/" {
        String::new()
    } else {
        base_path
    };
    let base_url = a
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}{base_path}"));
    let smart = if a.insecure_no_auth {
        eprintln!(
            "fhirlake: WARNING: --insecure-no-auth: member data is served without any token check"
        );
        None
    } else {
        Some(smart_for(&a.auth, &a.lake, &base_url).await?)
    };
    let audit = match &a.audit_log {
        Some(p) => Some(Arc::new(api::smart::audit::AuditSink::file(p)?)),
        None => None,
    };
    let settings = api::Settings {
        lake: mapper::lake::Lake::new(&a.lake),
        base_url: base_url.clone(),
        base_path,
        limits: query::params::Limits {
            default_count: a.default_count,
            max_count: a.max_count,
        },
        smart,
        audit,
        reload_every: Duration::from_millis(500),
    };
    let app = api::App::new(settings).await?;
    if app.snapshot().is_none() {
        eprintln!(
            "fhirlake: no snapshot published in {} yet; answering 503 until one is",
            a.lake.display()
        );
    }
    println!("fhirlake serving {base_url}");
    use std::io::Write;
    std::io::stdout().flush()?;
    api::serve(app, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn demo(a: DemoArgs) -> Result<ExitCode> {
    if !a.samples.is_dir() {
        bail!(
            "no samples folder at {} (run from the repository root)",
            a.samples.display()
        );
    }
    let opts = mapper::pipeline::Options {
        lake: a.lake.clone(),
        mappings: PathBuf::from("mappings"),
        forced_mapping: None,
        progress: None,
        file_rows: None,
        buffer_bytes: None,
        memory_keys: None,
    };
    let paths: Vec<PathBuf> = ["rif", "plain", "x12", "formulary"]
        .iter()
        .map(|d| a.samples.join(d))
        .filter(|p| p.is_dir())
        .collect();
    let lake = a.lake.clone();
    let report =
        tokio::task::spawn_blocking(move || mapper::pipeline::run(&paths, &opts)).await??;
    print_report(&report);
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (use --listen 127.0.0.1:0 for any free port)",
                a.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}/fhir");
    let auth = AuthArgs {
        auth_config: a.samples.join("auth"),
        auth_state: None,
        issuer: None,
        audience: None,
        patient_claim: "patient".into(),
    };
    let smart = smart_for(&auth, &lake, &base_url).await?;
    let token = smart.mint("567834", "patient/*.rs", "fhirlake-cli")?;
    let settings = api::Settings {
        lake: mapper::lake::Lake::new(&lake),
        base_url: base_url.clone(),
        base_path: "/fhir".into(),
        limits: query::params::Limits::default(),
        smart: Some(smart),
        audit: None,
        reload_every: Duration::from_millis(500),
    };
    let app = api::App::new(settings).await?;
    println!();
    println!("fhirlake serving {base_url}");
    println!("Try (a token for member 567834, valid one hour):");
    println!("  TOKEN={token}");
    println!("  curl -s {base_url}/metadata | head -c 400");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" {base_url}/Patient/567834");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" '{base_url}/ExplanationOfBenefit?patient=567834&_count=2'");
    println!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" '{base_url}/Patient/567834/$everything'"
    );
    println!("  curl -s '{base_url}/MedicationKnowledge?_count=3'        # formulary: public");
    println!(
        "  curl -s '{base_url}/InsurancePlan?coverage-area=Location/area-ME&_include=InsurancePlan:coverage-area'   # plans offered in Maine"
    );
    println!("Stop with Ctrl-C.");
    use std::io::Write;
    std::io::stdout().flush()?;
    api::serve(app, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn token(a: TokenArgs) -> Result<ExitCode> {
    let smart = smart_for(&a.auth, &a.lake, &a.base_url).await?;
    println!("{}", smart.mint(&a.patient, &a.scope, &a.client)?);
    Ok(ExitCode::SUCCESS)
}

fn snapshots(a: &SnapshotArgs) -> Result<ExitCode> {
    let lake = mapper::lake::Lake::new(&a.lake);
    if let Some(name) = &a.rollback {
        lake.switch_to(name)?;
        println!("current snapshot is now {name}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(keep) = a.keep {
        for name in lake.prune(keep)? {
            println!("removed {name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.verify {
        let current = lake.current_name()?.unwrap_or_default();
        return Ok(match mapper::pipeline::verify_key_index(&a.lake) {
            Ok((rows, runs)) => {
                println!(
                    "the key index of {current} agrees with its tables: {rows} rows, at most {runs} index runs per type"
                );
                ExitCode::SUCCESS
            }
            Err(wrong) => {
                for why in &wrong {
                    eprintln!("the key index of {current} disagrees with its tables: {why}");
                    let Some(t) = &why.resource_type else {
                        continue;
                    };
                    // The next run that touches the type rebuilds its index from the table.
                    match lake.mark_key_index_wrong(t, "fhirlake snapshots --verify") {
                        Ok(()) => eprintln!(
                            "the next run that touches {t} rebuilds its key index from the table"
                        ),
                        Err(e) => eprintln!("cannot leave the rebuild marker: {e}"),
                    }
                }
                ExitCode::from(1)
            }
        });
    }
    let current = lake.current_name()?;
    for name in lake.list()? {
        let m = lake.manifest(&name)?;
        let mark = if Some(&name) == current.as_ref() {
            "*"
        } else {
            " "
        };
        let counts: Vec<String> = m.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{mark} {name}  {}  {}", m.created, counts.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn export(lake: &Path, out: &Path) -> Result<ExitCode> {
    use std::io::Write;
    let lake = mapper::lake::Lake::new(lake);
    let dir = lake.current()?;
    let mut w: Box<dyn Write> = if out == Path::new("-") {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(out)?))
    };
    for t in mapper::registry::resource_types() {
        for path in mapper::lake::Lake::table_files(&dir, t)? {
            for row in mapper::lake::read_rows(&path)? {
                writeln!(w, "{}", row.resource)?;
            }
        }
    }
    w.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn generate_dataset(dir: &Path, a: &GenerateArgs) -> Result<ExitCode> {
    use ingest::synth::{self, Template};
    use std::io::BufWriter;
    let create = |p: PathBuf| -> Result<BufWriter<std::fs::File>> {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    let bene = Template::load(Path::new("samples/rif/synthea-beneficiary_2021.csv"), b'|')
        .context("reading the beneficiary template (run from the repository root)")?;
    let carrier = Template::load(Path::new("samples/rif/synthea-carrier.csv"), b'|')
        .context("reading the carrier template (run from the repository root)")?;
    let b = synth::rif_beneficiaries(
        &bene,
        &mut create(dir.join("rif/beneficiaries.txt"))?,
        a.members,
        a.seed,
    )?;
    let (c, rows) = synth::rif_carrier(
        &carrier,
        &mut create(dir.join("rif/carrier.txt"))?,
        a.members,
        a.claims_per_member,
        a.seed,
    )?;
    // Inpatient stays are rarer than office visits; every member fills prescriptions.
    let claims = a.members * a.claims_per_member;
    let mut more_claims = Vec::new();
    for (name, shape, template, count) in [
        (
            "inpatient",
            &synth::INPATIENT,
            "synthea-inpatient.csv",
            claims / 10,
        ),
        (
            "outpatient",
            &synth::OUTPATIENT,
            "synthea-outpatient.csv",
            claims / 2,
        ),
        ("pde", &synth::PDE, "synthea-pde.csv", claims),
    ] {
        let t =
            Template::load(&Path::new("samples/rif").join(template), b'|').with_context(|| {
                format!("reading the {name} template (run from the repository root)")
            })?;
        let out = &mut create(dir.join(format!("rif/{name}.txt")))?;
        let (bytes, rows) = synth::rif_claims(&t, shape, out, a.members, count, a.seed)?;
        more_claims.push(format!("{name} {bytes} bytes ({rows} lines)"));
    }
    let (pm, pc, prow) = synth::plain(
        &mut create(dir.join("plain/members.csv"))?,
        &mut create(dir.join("plain/claims.csv"))?,
        a.members,
        a.claims_per_member,
        a.seed,
    )?;
    println!(
        "rif: beneficiaries {b} bytes, carrier {c} bytes ({rows} lines), {}",
        more_claims.join(", ")
    );
    println!("plain: members {pm} bytes, claims {pc} bytes ({prow} lines)");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled mimalloc numbers its options by their place in `mi_option_e`; pin the
    /// ones named by number through a neighbour (a constant the crate names) and their
    /// defaults in mimalloc 3, so an upgrade that renumbers fails here.
    #[test]
    fn allocator_option_numbers() {
        use libmimalloc_sys::{_mi_option_last, mi_option_get, mi_option_use_numa_nodes};
        // SAFETY: reading an option has no preconditions.
        let get = |option| unsafe { mi_option_get(option) };
        assert_eq!(mi_option_use_numa_nodes - 1, MI_OPTION_PURGE_DELAY);
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(MI_OPTION_PURGE_DELAY), 1000);
        }
        // page_reclaim_on_free is the twelfth option from the end of mimalloc 3's list; the
        // two after it default to 2 (page_full_retain) and 4 (page_max_candidates), and the
        // seventh after it to 32 (page_cross_thread_max_reclaim).
        assert_eq!(_mi_option_last - 12, MI_OPTION_PAGE_RECLAIM_ON_FREE);
        assert_eq!(get(MI_OPTION_PAGE_RECLAIM_ON_FREE + 1), 2);
        assert_eq!(get(MI_OPTION_PAGE_RECLAIM_ON_FREE + 2), 4);
        assert_eq!(get(MI_OPTION_PAGE_RECLAIM_ON_FREE + 7), 32);
        let untuned = [
            "MIMALLOC_PAGE_RECLAIM_ON_FREE",
            "MIMALLOC_ABANDONED_RECLAIM_ON_FREE",
            "MIMALLOC_PURGE_DELAY",
        ]
        .iter()
        .all(|name| std::env::var_os(name).is_none());
        if untuned {
            assert_eq!(get(MI_OPTION_PAGE_RECLAIM_ON_FREE), 0);
            tune_allocator_for_ingest();
            assert_eq!(get(MI_OPTION_PAGE_RECLAIM_ON_FREE), 1);
            assert_eq!(get(MI_OPTION_PURGE_DELAY), -1);
        }
    }
}

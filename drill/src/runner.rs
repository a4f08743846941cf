//! Runs a plan against a live Quartet: the loads, the timeline of faults, the breaker
//! sampler and the progress line, all from one start instant `t0`.
//!
//! Faults are always removed at the end: each window is marked active *before* it is set
//! on Quartet, and whatever is still marked when the run ends (normally, on an error or on
//! Ctrl-C) is removed again, so a drill never leaves a fault behind.

use crate::admin::{Admin, AdminError};
use crate::load::{self, Caller, CallerError, Counters};
use crate::record::{BreakerObs, BreakerSample, FaultWindow, LoadRecording, Recording};
use crate::scenario::{FaultAction, FaultStep, Plan};
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the breakers are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How the live progress line is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// `\r` line refreshed every second on a terminal, a line every 5 s otherwise.
    #[default]
    Auto,
    /// Nothing.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot use Quartet's admin API")]
    Unreachable(#[source] AdminError),
    #[error("Quartet at {admin} knows no target `{target}` (it knows: {known})")]
    UnknownTarget {
        admin: std::net::SocketAddr,
        target: String,
        known: String,
    },
    #[error("fault {index} on `{target}` could not be set")]
    Fault {
        index: usize,
        target: String,
        #[source]
        source: StepError,
    },
    #[error("load `{load}` cannot start")]
    Caller {
        load: String,
        #[source]
        source: CallerError,
    },
    #[error("cannot build the admin client")]
    Client(#[source] reqwest::Error),
}

impl RunError {
    /// The scenario does not fit the Quartet it names (exit status 2).
    pub fn is_invalid_scenario(&self) -> bool {
        matches!(self, RunError::UnknownTarget { .. })
    }
}

/// Why a fault window could not be set or removed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("`{command}` could not be started")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("`{command}` did not end within {}s", COMMAND_LIMIT.as_secs())]
    Hung { command: String },
}

/// How long a window's `run` or `undo` command may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Runs a window's command to its end; its output is kept for the error only.
async fn command(argv: &[String]) -> Result<(), StepError> {
    let shown = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(COMMAND_LIMIT, child).await {
        Err(_) => return Err(StepError::Hung { command: shown }),
        Ok(Err(source)) => {
            return Err(StepError::Spawn {
                command: shown,
                source,
            })
        }
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    let output: String = output.chars().take(500).collect();
    Err(StepError::Failed {
        command: shown,
        status: out.status,
        output,
    })
}

/// What the timeline executor knows of one fault window.
#[derive(Clone, Debug)]
struct WindowState {
    step: FaultStep,
    active: bool,
    requested_at: Option<Duration>,
    applied_at: Option<Duration>,
    removing_at: Option<Duration>,
    removed_at: Option<Duration>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks that Quartet answers and knows every target the plan names.
pub async fn preflight(plan: &Plan, admin: &Admin) -> Result<(), RunError> {
    admin.healthz().await.map_err(RunError::Unreachable)?;
    let breakers = admin.breakers().await.map_err(RunError::Unreachable)?;
    let mut known: Vec<String> = breakers.iter().map(|b| b.target.clone()).collect();
    // /readyz lists targets that may have no breaker; an older Quartet may not say.
    if let Ok(more) = admin.ready_targets().await {
        known.extend(more);
    }
    known.sort();
    known.dedup();
    let is_known = |t: &str| {
        known.iter().any(|k| k == t)
            || t.split_once(':')
                .is_some_and(|(_, n)| known.iter().any(|k| k == n))
    };
    let mut named: Vec<&str> = plan.faults.iter().map(|f| f.target.as_str()).collect();
    for e in &plan.expects {
        if let crate::scenario::Expect::BreakerOpens { target, .. }
        | crate::scenario::Expect::BreakerCloses { target, .. } = e
        {
            named.push(target);
        }
    }
    for t in named {
        if !is_known(t) {
            return Err(RunError::UnknownTarget {
                admin: admin.addr(),
                target: t.to_string(),
                known: if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    Ok(())
}

async fn apply(admin: &Admin, step: &FaultStep) -> Result<(), StepError> {
    match &step.action {
        FaultAction::Request(spec) => Ok(admin.set_fault(&step.target, spec).await?),
        FaultAction::Breaker { state, endpoint } => Ok(admin
            .set_breaker(&step.target, endpoint.as_deref(), *state)
            .await?),
        FaultAction::Command { run, .. } => command(run).await,
    }
}

async fn remove(admin: &Admin, step: &FaultStep) -> Result<(), StepError> {
    match &step.action {
        FaultAction::Request(_) => Ok(admin.clear_fault(&step.target).await?),
        FaultAction::Breaker { endpoint, .. } => Ok(admin
            .set_breaker(
                &step.target,
                endpoint.as_deref(),
                crate::scenario::BreakerCommand::Closed,
            )
            .await?),
        FaultAction::Command { undo, .. } => match undo {
            Some(undo) => command(undo).await,
            None => Ok(()),
        },
    }
}

/// Removes every window still marked active, trying each a few times.
async fn cleanup(admin: &Admin, windows: &Shared<Vec<WindowState>>, t0: Instant) {
    let active: Vec<(usize, FaultStep)> = lock(windows)
        .iter()
        .enumerate()
        .filter(|(_, w)| w.active)
        .map(|(i, w)| (i, w.step.clone()))
        .collect();
    for (i, step) in active {
        let mut removed = false;
        if let Some(w) = lock(windows).get_mut(i) {
            w.removing_at = Some(Instant::now().saturating_duration_since(t0));
        }
        for attempt in 0..3 {
            match remove(admin, &step).await {
                Ok(()) => {
                    removed = true;
                    break;
                }
                Err(e) => {
                    eprintln!(
                        "quartet drill: removing fault {} on `{}` (attempt {}): {}",
                        i + 1,
                        step.target,
                        attempt + 1,
                        crate::Chain(&e)
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let mut ws = lock(windows);
        if let Some(w) = ws.get_mut(i) {
            w.active = !removed;
            w.removed_at = Some(Instant::now().saturating_duration_since(t0));
        }
        if !removed {
            eprintln!(
                "quartet drill: fault {} on `{}` may still be set: remove it with the admin API",
                i + 1,
                step.target
            );
        }
    }
}

/// The timeline executor: applies and removes every window at its time. Returns the first
/// error that makes the drill meaningless (a fault that cannot be set).
async fn timeline(
    admin: Admin,
    windows: Shared<Vec<WindowState>>,
    t0: Instant,
) -> Result<(), RunError> {
    let steps: Vec<FaultStep> = lock(&windows).iter().map(|w| w.step.clone()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, step) in steps.into_iter().enumerate() {
        let admin = admin.clone();
        let windows = windows.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(t0 + step.at).await;
            // Marked before it is sent: if the run stops mid-request, cleanup removes it.
            {
                let mut ws = lock(&windows);
                ws[i].active = true;
                ws[i].requested_at = Some(Instant::now().saturating_duration_since(t0));
            }
            apply(&admin, &step)
                .await
                .map_err(|source| RunError::Fault {
                    index: i + 1,
                    target: step.target.clone(),
                    source,
                })?;
            lock(&windows)[i].applied_at = Some(Instant::now().saturating_duration_since(t0));
            tokio::time::sleep_until(t0 + step.end()).await;
            lock(&windows)[i].removing_at = Some(Instant::now().saturating_duration_since(t0));
            let removed = remove(&admin, &step).await;
            let mut ws = lock(&windows);
            ws[i].removed_at = Some(Instant::now().saturating_duration_since(t0));
            // On failure it stays active, for the cleanup to try again.
            if removed.is_ok() {
                ws[i].active = false;
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            return Err(e);
        }
    }
    Ok(())
}

/// Polls the breakers every [`SAMPLE_EVERY`] until `stop`.
async fn sampler(
    admin: Admin,
    t0: Instant,
    samples: Shared<Vec<BreakerSample>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Ok(breakers) = admin.breakers().await {
            let t = Instant::now().saturating_duration_since(t0);
            lock(&samples).push(BreakerSample { t, breakers });
        }
    }
}

/// One line: elapsed, rate, successes, errors, breaker states.
pub fn progress_line(
    elapsed: Duration,
    total: Duration,
    done: u64,
    rate: f64,
    ok: u64,
    errors: u64,
    breakers: &[BreakerObs],
) -> String {
    let mut states: Vec<String> = breakers
        .iter()
        .map(|b| format!("{}@{}={}", b.target, b.endpoint, b.state.as_str()))
        .collect();
    states.sort();
    states.dedup();
    let shown = if states.len() > 4 {
        let open = breakers.iter().filter(|b| b.state.is_open()).count();
        format!("{} breakers, {open} open", breakers.len())
    } else {
        states.join(" ")
    };
    format!(
        "{:>5.1}s/{:.0}s  {:>7.1} req/s  {done} done  {ok} ok  {errors} err  {shown}",
        elapsed.as_secs_f64(),
        total.as_secs_f64(),
        rate,
    )
}

async fn progress(
    mode: ProgressMode,
    t0: Instant,
    total: Duration,
    counters: Vec<Arc<Counters>>,
    samples: Shared<Vec<BreakerSample>>,
    mut stop: watch::Receiver<bool>,
) {
    if mode == ProgressMode::Off {
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval_at(t0 + every, every);
    let mut last_done = 0u64;
    let mut last_at = t0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now = Instant::now();
        let sum = |f: fn(&Counters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
        let done = sum(|c| c.done.load(Ordering::Relaxed));
        let ok = sum(|c| c.ok.load(Ordering::Relaxed));
        let errors = sum(|c| c.errors.load(Ordering::Relaxed));
        let secs = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        let rate = (done - last_done.min(done)) as f64 / secs;
        last_done = done;
        last_at = now;
        let breakers = lock(&samples)
            .last()
            .map(|s| s.breakers.clone())
            .unwrap_or_default();
        let line = progress_line(
            now.saturating_duration_since(t0),
            total,
            done,
            rate,
            ok,
            errors,
            &breakers,
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}

/// The last moment a breaker expectation looks at, from the planned fault times.
pub fn observe_until(plan: &Plan) -> Duration {
    use crate::scenario::{Anchor, Expect};
    plan.expects
        .iter()
        .filter_map(|e| match e {
            Expect::BreakerOpens { from, within, .. }
            | Expect::BreakerCloses { from, within, .. } => {
                let at = match from {
                    Anchor::At(t) => Some(*t),
                    Anchor::FaultStart(i) => plan.faults.get(*i).map(|f| f.at),
                    Anchor::FaultEnd(i) => plan.faults.get(*i).map(FaultStep::end),
                };
                // A sample period more, so the last moment is seen.
                at.map(|t| t + *within + SAMPLE_EVERY)
            }
            _ => None,
        })
        .max()
        .unwrap_or_default()
}

/// Runs the plan; `interrupt` resolving stops it early (the recording says so).
pub async fn execute(
    plan: &Plan,
    progress_mode: ProgressMode,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Recording, RunError> {
    let admin = Admin::new(plan.admin, plan.admin_token.clone()).map_err(RunError::Client)?;
    preflight(plan, &admin).await?;

    let mut callers = Vec::new();
    for l in &plan.loads {
        let caller = Caller::new(l, plan.public).map_err(|source| RunError::Caller {
            load: l.name.clone(),
            source,
        })?;
        callers.push(Arc::new(caller));
    }

    let end_of_load = plan
        .loads
        .iter()
        .map(|l| l.start + l.duration)
        .chain(plan.faults.iter().map(FaultStep::end))
        .max()
        .unwrap_or_default();
    let longest_timeout = plan
        .loads
        .iter()
        .map(|l| l.timeout)
        .max()
        .unwrap_or_default();

    // A little ahead, so the first scheduled requests are not late.
    let t0 = Instant::now() + Duration::from_millis(50);
    let deadline = t0 + end_of_load + longest_timeout;

    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let windows: Shared<Vec<WindowState>> = Arc::new(Mutex::new(
        plan.faults
            .iter()
            .map(|s| WindowState {
                step: s.clone(),
                active: false,
                requested_at: None,
                applied_at: None,
                removing_at: None,
                removed_at: None,
            })
            .collect(),
    ));
    let samples: Shared<Vec<BreakerSample>> = Arc::default();

    let counters: Vec<Arc<Counters>> = plan.loads.iter().map(|_| Arc::default()).collect();
    let mut load_tasks = Vec::new();
    for ((l, caller), c) in plan.loads.iter().zip(&callers).zip(&counters) {
        load_tasks.push(tokio::spawn(load::run(
            Arc::new(l.clone()),
            caller.clone(),
            t0,
            deadline,
            c.clone(),
            cancel_rx.clone(),
        )));
    }
    let sampler_task = tokio::spawn(sampler(admin.clone(), t0, samples.clone(), stop_rx.clone()));
    let progress_task = tokio::spawn(progress(
        progress_mode,
        t0,
        end_of_load,
        counters.clone(),
        samples.clone(),
        stop_rx,
    ));
    let mut timeline_task = tokio::spawn(timeline(admin.clone(), windows.clone(), t0));

    let loads_done = futures_util::future::join_all(load_tasks);
    tokio::pin!(loads_done);
    tokio::pin!(interrupt);
    let mut interrupted = false;
    let mut failure: Option<RunError> = None;
    let mut timeline_done = false;
    let results = loop {
        tokio::select! {
            r = &mut loads_done => break r,
            r = &mut timeline_task, if !timeline_done => {
                timeline_done = true;
                if let Ok(Err(e)) = r {
                    failure = Some(e);
                    let _ = cancel_tx.send(true);
                }
            }
            _ = &mut interrupt, if !interrupted => {
                interrupted = true;
                let _ = cancel_tx.send(true);
            }
        }
    };
    // Windows that end after the loads still run their course, unless stopped early.
    if !timeline_done {
        if interrupted || failure.is_some() {
            timeline_task.abort();
        } else {
            tokio::select! {
                r = &mut timeline_task => {
                    if let Ok(Err(e)) = r {
                        failure = Some(e);
                    }
                }
                _ = &mut interrupt => {
                    interrupted = true;
                    timeline_task.abort();
                }
            }
        }
    }
    cleanup(&admin, &windows, t0).await;
    // Breaker expectations may look past the end of the load: keep sampling until their
    // last `within` has passed (bounded by the scenario), unless stopped early.
    if !interrupted && failure.is_none() {
        let until = t0 + observe_until(plan);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut interrupt => interrupted = true,
        }
    }
    let _ = stop_tx.send(true);
    let _ = sampler_task.await;
    let _ = progress_task.await;
    if let Some(e) = failure {
        return Err(e);
    }

    let elapsed = Instant::now().saturating_duration_since(t0);
    let loads = plan
        .loads
        .iter()
        .zip(results)
        .map(|(l, r)| LoadRecording {
            name: l.name.clone(),
            records: r.unwrap_or_default(),
        })
        .collect();
    let faults = lock(&windows)
        .iter()
        .map(|w| FaultWindow {
            target: w.step.target.clone(),
            description: w.step.action.describe(),
            planned_start: w.step.at,
            planned_end: w.step.end(),
            requested_at: w.requested_at,
            applied_at: w.applied_at,
            removing_at: w.removing_at.filter(|_| w.applied_at.is_some()),
            removed_at: w.removed_at.filter(|_| w.applied_at.is_some()),
        })
        .collect();
    let samples = std::mem::take(&mut *lock(&samples));
    Ok(Recording {
        elapsed,
        loads,
        samples,
        faults,
        interrupted,
    })
}

//! The tract side: a `.tflite` file becomes one optimised plan shared by a bounded pool of run
//! states.
//!
//! A tract `SimplePlan` is immutable and shared (`Arc`); a `SimpleState` holds the buffers of
//! one run and is not shareable. The pool hands out at most `size` states at a time — created
//! lazily, reused afterwards — and callers beyond that wait on a `Condvar` until one is given
//! back or their deadline passes. So memory is bounded by the pool size, not by the number of
//! threads calling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tract_tflite::prelude::*;
use tract_tflite::Tflite;

use crate::DeviceError;

/// The optimised, runnable plan of a model.
pub type Plan = Arc<TypedRunnableModel>;
type State = TypedSimpleState;

/// The tract TFLite framework, built once (its operator registry is a few hash maps).
fn framework() -> &'static Tflite {
    static FRAMEWORK: OnceLock<Tflite> = OnceLock::new();
    FRAMEWORK.get_or_init(tract_tflite::tflite)
}

/// Parses `bytes` (already checked with [`momentum_models::export::check_tflite`]) and
/// optimises them into a runnable plan. A panic inside the parser — tract assumes well-formed
/// files in places — is caught and reported as an error, never propagated to the host app.
pub fn compile(bytes: &[u8]) -> Result<Plan, DeviceError> {
    let build = || -> TractResult<Plan> {
        let model = framework().model_for_read(&mut &bytes[..])?;
        model.into_optimized()?.into_runnable()
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)) {
        Ok(Ok(plan)) => Ok(plan),
        Ok(Err(e)) => Err(DeviceError::Interpreter(format!("{e:#}"))),
        Err(_) => Err(DeviceError::Interpreter(
            "the interpreter panicked while loading the model".to_string(),
        )),
    }
}

/// Runs one row through `state`: `[1, n]` float32 in, the `[1, 1]` probability out.
fn run(state: &mut State, input: &[f32]) -> Result<f32, DeviceError> {
    let interpreter = |e: TractError| DeviceError::Interpreter(format!("{e:#}"));
    let tensor = Tensor::from_shape::<f32>(&[1, input.len()], input).map_err(interpreter)?;
    let outputs = state
        .run(tvec![tensor.into_tvalue()])
        .map_err(interpreter)?;
    let output = outputs
        .first()
        .ok_or_else(|| DeviceError::Interpreter("the model has no output".to_string()))?;
    let view = output.try_as_plain_ram().map_err(interpreter)?;
    let values = view.as_slice::<f32>().map_err(interpreter)?;
    values
        .first()
        .copied()
        .ok_or_else(|| DeviceError::Interpreter("empty output".to_string()))
}

/// At most `size` run states over one plan.
pub struct InterpreterPool {
    plan: Plan,
    size: usize,
    inner: Mutex<PoolInner>,
    returned: Condvar,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

struct PoolInner {
    idle: Vec<State>,
    /// States in existence (idle or lent); never above `size`.
    created: usize,
}

impl std::fmt::Debug for InterpreterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpreterPool")
            .field("size", &self.size)
            .field("in_use", &self.in_use())
            .field("peak", &self.peak())
            .finish()
    }
}

impl InterpreterPool {
    /// A pool of at most `size` (≥ 1) states over `plan`; none is created yet.
    pub fn new(plan: Plan, size: usize) -> Self {
        Self {
            plan,
            size: size.max(1),
            inner: Mutex::new(PoolInner {
                idle: Vec::new(),
                created: 0,
            }),
            returned: Condvar::new(),
            in_use: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// The pool's bound.
    pub fn size(&self) -> usize {
        self.size
    }

    /// States lent right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::SeqCst)
    }

    /// The most states ever lent at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// States created so far (≤ size).
    pub fn created(&self) -> usize {
        self.inner.lock().created
    }

    /// Borrows a state, waiting at most `timeout` for one to be free.
    pub fn acquire(&self, timeout: Duration) -> Result<PooledState<'_>, DeviceError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock();
        let state = loop {
            if let Some(state) = inner.idle.pop() {
                break state;
            }
            if inner.created < self.size {
                inner.created += 1;
                drop(inner);
                match State::new(&self.plan) {
                    Ok(state) => break state,
                    Err(e) => {
                        let mut inner = self.inner.lock();
                        inner.created -= 1;
                        self.returned.notify_one();
                        return Err(DeviceError::Interpreter(format!("{e:#}")));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(DeviceError::Timeout { timeout });
            }
            // Woken by a returned state (or a failed creation), or at the deadline: look again.
            self.returned.wait_until(&mut inner, deadline);
        };
        let now = self.in_use.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        debug_assert!(
            now <= self.size,
            "{now} states lent from a pool of {}",
            self.size
        );
        Ok(PooledState {
            pool: self,
            state: Some(state),
        })
    }

    fn give_back(&self, state: State) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        self.inner.lock().idle.push(state);
        self.returned.notify_one();
    }
}

/// A state lent by an [`InterpreterPool`]; given back when dropped.
pub struct PooledState<'a> {
    pool: &'a InterpreterPool,
    state: Option<State>,
}

impl PooledState<'_> {
    /// Runs one row of raw features and returns the probability.
    pub fn run(&mut self, input: &[f32]) -> Result<f32, DeviceError> {
        match self.state.as_mut() {
            Some(state) => run(state, input),
            None => Err(DeviceError::Interpreter(
                "state already returned".to_string(),
            )),
        }
    }
}

impl Drop for PooledState<'_> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            self.pool.give_back(state);
        }
    }
}

//! Services shared by the example programs: a greeter for the two-terminal hello world, a
//! calculator whose division returns an application error, the streaming services of
//! [`streams`], the prime-counting workers of [`primes`], and [`expr`]'s evaluator of
//! expressions, a recursive type.

pub mod expr;
pub mod primes;
pub mod streams;

use serde::{Deserialize, Serialize};

/// Says hello.
#[rpc_core::service]
pub trait Greeter {
    /// Returns a greeting for `name`.
    async fn hello(&self, name: String) -> String;
}

/// The greeter the examples serve.
#[derive(Debug, Default)]
pub struct FriendlyGreeter;

impl Greeter for FriendlyGreeter {
    async fn hello(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
}

/// Why a calculation failed: an application error, sent as a plain value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was zero.
    DivideByZero,
    /// The result does not fit in an `i64`.
    Overflow,
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MathError::DivideByZero => "division by zero",
            MathError::Overflow => "the result does not fit in 64 bits",
        })
    }
}

impl std::error::Error for MathError {}

/// Integer arithmetic, served remotely.
#[rpc_core::service]
pub trait Calc {
    /// `a + b`, or an overflow.
    async fn add(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// `a * b`, or an overflow.
    async fn mul(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// `a / b`, refusing to divide by zero.
    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// How many calculations this server has done, across all clients.
    async fn count(&self) -> u64;
}

/// A calculator that counts the calculations it does.
#[derive(Debug, Default)]
pub struct Calculator {
    done: std::sync::atomic::AtomicU64,
}

impl Calculator {
    fn record(&self, result: Option<i64>, error: MathError) -> Result<i64, MathError> {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result.ok_or(error)
    }
}

impl Calc for Calculator {
    async fn add(&self, a: i64, b: i64) -> Result<i64, MathError> {
        self.record(a.checked_add(b), MathError::Overflow)
    }

    async fn mul(&self, a: i64, b: i64) -> Result<i64, MathError> {
        self.record(a.checked_mul(b), MathError::Overflow)
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        let error = if b == 0 {
            MathError::DivideByZero
        } else {
            MathError::Overflow
        };
        self.record(a.checked_div(b), error)
    }

    async fn count(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }
}

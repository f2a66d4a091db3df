//! Recursive types over the wire: arithmetic expressions, sent whole as trees and evaluated on
//! the server.

use serde::{Deserialize, Serialize};

/// An integer expression: a tree, each node boxed in its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expr {
    /// A number.
    Num(i64),
    /// The value a [`Binding`] further out gave `name`.
    Var(String),
    /// The sum of the two.
    Add(Box<Expr>, Box<Expr>),
    /// The product of the two.
    Mul(Box<Expr>, Box<Expr>),
    /// The negation.
    Neg(Box<Expr>),
    /// `let name = value in body`: the two types refer to each other.
    Let(Box<Binding>),
}

/// `let name = value in body`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The name bound.
    pub name: String,
    /// What it is bound to.
    pub value: Expr,
    /// Where it is bound.
    pub body: Expr,
}

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalError {
    /// A variable no binding gives a value.
    Unbound(String),
    /// A result that does not fit in an `i64`.
    Overflow,
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Unbound(name) => write!(f, "`{name}` is not bound"),
            EvalError::Overflow => f.write_str("the result does not fit in 64 bits"),
        }
    }
}

impl std::error::Error for EvalError {}

/// Evaluates expressions.
#[rpc_core::service]
pub trait Evaluator {
    /// The value of `expr`.
    async fn eval(&self, expr: Expr) -> Result<i64, EvalError>;
    /// `expr` with every part that holds no variable replaced by its value.
    async fn simplify(&self, expr: Expr) -> Expr;
}

/// The evaluator the examples serve.
#[derive(Debug, Default)]
pub struct Arithmetic;

impl Evaluator for Arithmetic {
    async fn eval(&self, expr: Expr) -> Result<i64, EvalError> {
        eval(&expr, &mut Vec::new())
    }

    async fn simplify(&self, expr: Expr) -> Expr {
        simplify(expr)
    }
}

fn eval<'a>(expr: &'a Expr, bound: &mut Vec<(&'a str, i64)>) -> Result<i64, EvalError> {
    let checked = |value: Option<i64>| value.ok_or(EvalError::Overflow);
    match expr {
        Expr::Num(n) => Ok(*n),
        Expr::Var(name) => bound
            .iter()
            .rev()
            .find(|(bound, _)| bound == name)
            .map(|(_, value)| *value)
            .ok_or_else(|| EvalError::Unbound(name.clone())),
        Expr::Add(a, b) => checked(eval(a, bound)?.checked_add(eval(b, bound)?)),
        Expr::Mul(a, b) => checked(eval(a, bound)?.checked_mul(eval(b, bound)?)),
        Expr::Neg(a) => checked(eval(a, bound)?.checked_neg()),
        Expr::Let(binding) => {
            let value = eval(&binding.value, bound)?;
            bound.push((&binding.name, value));
            let body = eval(&binding.body, bound);
            bound.pop();
            body
        }
    }
}

fn simplify(expr: Expr) -> Expr {
    let folded = match expr {
        Expr::Add(a, b) => Expr::Add(Box::new(simplify(*a)), Box::new(simplify(*b))),
        Expr::Mul(a, b) => Expr::Mul(Box::new(simplify(*a)), Box::new(simplify(*b))),
        Expr::Neg(a) => Expr::Neg(Box::new(simplify(*a))),
        Expr::Let(binding) => {
            let Binding { name, value, body } = *binding;
            Expr::Let(Box::new(Binding {
                name,
                value: simplify(value),
                body: simplify(body),
            }))
        }
        leaf => leaf,
    };
    match eval(&folded, &mut Vec::new()) {
        Ok(value) => Expr::Num(value),
        Err(_) => folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: i64) -> Box<Expr> {
        Box::new(Expr::Num(n))
    }

    fn var(name: &str) -> Box<Expr> {
        Box::new(Expr::Var(name.into()))
    }

    #[test]
    fn bindings_shadow_and_errors_say_why() {
        // let x = 2 in (let x = x * 10 in x + 1) + x
        let inner = Expr::Let(Box::new(Binding {
            name: "x".into(),
            value: Expr::Mul(var("x"), num(10)),
            body: Expr::Add(var("x"), num(1)),
        }));
        let expr = Expr::Let(Box::new(Binding {
            name: "x".into(),
            value: Expr::Num(2),
            body: Expr::Add(Box::new(inner), var("x")),
        }));
        assert_eq!(eval(&expr, &mut Vec::new()), Ok(23));
        assert_eq!(
            eval(&Expr::Var("y".into()), &mut Vec::new()),
            Err(EvalError::Unbound("y".into()))
        );
        let overflow = Expr::Mul(num(i64::MAX), num(2));
        assert_eq!(eval(&overflow, &mut Vec::new()), Err(EvalError::Overflow));
    }

    #[test]
    fn simplify_folds_what_holds_no_variable() {
        let expr = Expr::Add(Box::new(Expr::Mul(num(2), num(3))), var("x"));
        assert_eq!(simplify(expr), Expr::Add(num(6), var("x")));
    }
}

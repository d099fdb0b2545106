//! Quality gates: `FIGURE OP NUMBER` on the overall figures, which fail a run (after it wrote
//! its outputs) when they hold.

use serde::Serialize;

use super::totals::Totals;

/// A comparison of a quality gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    const ALL: [(&'static str, CmpOp); 6] = [
        ("<=", CmpOp::Le),
        (">=", CmpOp::Ge),
        ("==", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        ("<", CmpOp::Lt),
        (">", CmpOp::Gt),
    ];

    fn holds(self, x: f64, y: f64) -> bool {
        match self {
            CmpOp::Lt => x < y,
            CmpOp::Le => x <= y,
            CmpOp::Gt => x > y,
            CmpOp::Ge => x >= y,
            CmpOp::Eq => x == y,
            CmpOp::Ne => x != y,
        }
    }

    fn symbol(self) -> &'static str {
        CmpOp::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .expect("listed")
            .0
    }
}

/// A quality gate on the overall report row, `FIGURE OP NUMBER` (`triplets == 0`,
/// `neighbour_violation_share > 0.5`): the run fails, after writing its outputs, when it holds.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Gate {
    pub figure: String,
    pub op: CmpOp,
    pub value: f64,
}

impl std::str::FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> Result<Gate, String> {
        let (at, sym, op) = CmpOp::ALL
            .iter()
            .filter_map(|(sym, op)| s.find(sym).map(|at| (at, *sym, *op)))
            .min_by_key(|(at, sym, _)| (*at, std::cmp::Reverse(sym.len())))
            .ok_or_else(|| format!("`{s}` has no comparison (one of < <= > >= == !=)"))?;
        let figure = s[..at].trim().to_string();
        let value: f64 = s[at + sym.len()..]
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{}` is not a number", s[at + sym.len()..].trim()))?;
        let names = Totals::figure_names();
        if !names.contains(&figure) {
            return Err(format!(
                "`{s}`: unknown figure `{figure}`; known: {}",
                names.join(", ")
            ));
        }
        Ok(Gate { figure, op, value })
    }
}

impl TryFrom<String> for Gate {
    type Error = String;
    fn try_from(s: String) -> Result<Gate, String> {
        s.parse()
    }
}

impl From<Gate> for String {
    fn from(g: Gate) -> String {
        g.to_string()
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.figure, self.op.symbol(), self.value)
    }
}

impl Gate {
    /// The figure's value when the gate holds (a figure without a value never holds).
    pub fn check(&self, totals: &Totals) -> Option<f64> {
        let x = totals.figure(&self.figure).flatten()?;
        self.op.holds(x, self.value).then_some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_hold_on_the_overall_figures() {
        let totals = Totals {
            triplets: 0,
            neighbour_violation_share: Some(0.75),
            ..Default::default()
        };
        let zero: Gate = "triplets == 0".parse().unwrap();
        assert_eq!(zero.check(&totals), Some(0.0));
        let share: Gate = "neighbour_violation_share>=0.8".parse().unwrap();
        assert_eq!(share.check(&totals), None);
        let share: Gate = " neighbour_violation_share < 0.8 ".parse().unwrap();
        assert_eq!(share.check(&totals), Some(0.75));
        let undefined: Gate = "loss_mean > -1".parse().unwrap();
        assert_eq!(undefined.check(&totals), None, "no triplets, no mean");
        assert_eq!(share.to_string(), "neighbour_violation_share < 0.8");
    }

    #[test]
    fn bad_gates_say_what_is_wrong() {
        assert!(
            "triplets 0"
                .parse::<Gate>()
                .unwrap_err()
                .contains("no comparison")
        );
        assert!(
            "triplet == 0"
                .parse::<Gate>()
                .unwrap_err()
                .contains("unknown figure `triplet`")
        );
        assert!(
            "triplets == many"
                .parse::<Gate>()
                .unwrap_err()
                .contains("not a number")
        );
    }
}

//! Depth, cost and root fields of one operation, fragments expanded.
//!
//! Every walk is bounded: depth stops at the limit, cost at its budget (each field costs at
//! least 1, so a fragment bomb runs out of budget, not of memory), fragment cycles are refused
//! and every recursive call counts against [`WALK_LIMIT`] so the stack stays small.

use super::error::GraphqlError;
use super::parse::{Document, Selection, Value};

/// Nested selections (fields, inline fragments and spreads) walked through at most.
const WALK_LIMIT: u32 = 256;

/// Arguments whose integer value multiplies the cost of a field's selection.
const LIST_ARGUMENTS: [&str; 3] = ["first", "last", "limit"];

#[derive(Debug)]
pub struct Limits {
    pub max_depth: u32,
    pub max_cost: u64,
}

struct Walk<'d, 'a> {
    doc: &'d Document<'a>,
    variables: &'d serde_json::Value,
    limits: &'d Limits,
    /// Fragments being expanded, outermost first.
    active: Vec<&'a str>,
}

/// The operation's depth and cost, or the limit or fragment error that stopped the count.
pub fn measure(
    doc: &Document<'_>,
    selections: &[Selection<'_>],
    variables: &serde_json::Value,
    limits: &Limits,
) -> Result<(u32, u64), GraphqlError> {
    let mut walk = Walk {
        doc,
        variables,
        limits,
        active: Vec::new(),
    };
    let mut depth = 0;
    let cost = walk.cost(selections, 1, 0, limits.max_cost, &mut depth)?;
    Ok((depth, cost))
}

impl<'d, 'a> Walk<'d, 'a> {
    /// Cost of `set`, its fields at `depth`, within `budget`; `deepest` is raised as fields
    /// are seen.
    fn cost(
        &mut self,
        set: &'d [Selection<'a>],
        depth: u32,
        level: u32,
        budget: u64,
        deepest: &mut u32,
    ) -> Result<u64, GraphqlError> {
        if level > WALK_LIMIT {
            return Err(GraphqlError::too_deep(format!(
                "selections nest deeper than {WALK_LIMIT} levels"
            )));
        }
        let mut total: u64 = 0;
        for selection in set {
            let left = budget.saturating_sub(total);
            let cost = match selection {
                Selection::Field(field) => {
                    if depth > self.limits.max_depth {
                        return Err(GraphqlError::too_deep(format!(
                            "query depth exceeds the maximum of {} (field \"{}\" is at depth {depth})",
                            self.limits.max_depth, field.name
                        )));
                    }
                    *deepest = (*deepest).max(depth);
                    let times = self.multiplier(&field.args);
                    let inner_budget = left.saturating_sub(1) / times;
                    let inner = self.cost(
                        &field.selections,
                        depth + 1,
                        level + 1,
                        inner_budget,
                        deepest,
                    )?;
                    inner.saturating_mul(times).saturating_add(1)
                }
                Selection::Inline(inner) => self.cost(inner, depth, level + 1, left, deepest)?,
                Selection::Spread(name) => self.spread(name, depth, level, left, deepest)?,
            };
            total = total.saturating_add(cost);
            if total > budget {
                return Err(self.over_cost());
            }
        }
        Ok(total)
    }

    fn spread(
        &mut self,
        name: &'a str,
        depth: u32,
        level: u32,
        budget: u64,
        deepest: &mut u32,
    ) -> Result<u64, GraphqlError> {
        let fragment = fragment(self.doc, name)?;
        if self.active.contains(&name) {
            return Err(GraphqlError::validation(format!(
                "fragment \"{name}\" spreads itself"
            )));
        }
        self.active.push(name);
        let cost = self.cost(&fragment.selections, depth, level + 1, budget, deepest);
        self.active.pop();
        cost
    }

    fn over_cost(&self) -> GraphqlError {
        GraphqlError::too_costly(format!(
            "query cost exceeds the maximum of {}",
            self.limits.max_cost
        ))
    }

    /// `first`/`last`/`limit` as an integer (literal or variable), at least 1.
    fn multiplier(&self, args: &[(&str, Value<'_>)]) -> u64 {
        let value = args
            .iter()
            .find(|(name, _)| LIST_ARGUMENTS.contains(name))
            .and_then(|(_, value)| match value {
                Value::Int(n) => Some(*n),
                Value::Variable(v) => self.variables.get(*v).and_then(serde_json::Value::as_i64),
                Value::Other => None,
            });
        value.map_or(1, |n| u64::try_from(n).unwrap_or(0).max(1))
    }
}

fn fragment<'d, 'a>(
    doc: &'d Document<'a>,
    name: &str,
) -> Result<&'d super::parse::Fragment<'a>, GraphqlError> {
    doc.fragments
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| GraphqlError::validation(format!("unknown fragment \"{name}\"")))
}

/// The operation's root field names (not aliases), through fragments, in order.
pub fn root_fields<'a>(
    doc: &Document<'a>,
    selections: &[Selection<'a>],
) -> Result<Vec<&'a str>, GraphqlError> {
    let mut out = Vec::new();
    let mut active = Vec::new();
    collect_roots(doc, selections, &mut active, &mut out, 0)?;
    Ok(out)
}

fn collect_roots<'a>(
    doc: &Document<'a>,
    selections: &[Selection<'a>],
    active: &mut Vec<&'a str>,
    out: &mut Vec<&'a str>,
    level: u32,
) -> Result<(), GraphqlError> {
    if level > WALK_LIMIT {
        return Err(GraphqlError::too_deep(format!(
            "selections nest deeper than {WALK_LIMIT} levels"
        )));
    }
    for selection in selections {
        match selection {
            Selection::Field(f) => out.push(f.name),
            Selection::Inline(inner) => collect_roots(doc, inner, active, out, level + 1)?,
            Selection::Spread(name) => {
                if active.contains(name) {
                    return Err(GraphqlError::validation(format!(
                        "fragment \"{name}\" spreads itself"
                    )));
                }
                let f = fragment(doc, name)?;
                active.push(name);
                collect_roots(doc, &f.selections, active, out, level + 1)?;
                active.pop();
            }
        }
    }
    Ok(())
}

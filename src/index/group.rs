//! Exact indexes over one label group, for an anchor's nearest or farthest positives.

use faiss::index::IndexImpl;
use faiss::{Index, MetricType, index_factory};

use super::Candidates;
use crate::config::Metric;
use crate::error::Result;
use crate::score::dot;

/// Which end of the distance order a [`GroupIndex`] returns first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Nearest,
    Farthest,
}

/// An exact index over one label group, searched for its nearest or farthest members.
///
/// Farthest under `l2sq` is a maximum-inner-product search: `|a - p|^2 = |a|^2 + <q', p'>` with
/// `p' = [p, |p|^2]` and `q' = [-2a, 1]`. Under cosine it is the nearest of `-a`.
pub struct GroupIndex {
    index: IndexImpl,
    metric: Metric,
    order: Order,
    dim: usize,
    rows: usize,
}

impl GroupIndex {
    /// Builds the index over `members` (row-major vectors of one group).
    pub fn build(members: &[f32], dim: usize, metric: Metric, order: Order) -> Result<Self> {
        let rows = members.len() / dim;
        let (index_dim, faiss_metric) = match (metric, order) {
            (Metric::L2sq, Order::Nearest) => (dim, MetricType::L2),
            (Metric::L2sq, Order::Farthest) => (dim + 1, MetricType::InnerProduct),
            (Metric::Cosine, _) => (dim, MetricType::InnerProduct),
        };
        let mut index = index_factory(index_dim as u32, "Flat", faiss_metric)?;
        if index_dim == dim {
            index.add(members)?;
        } else {
            let mut aug = Vec::with_capacity(rows * index_dim);
            for p in members.chunks_exact(dim) {
                aug.extend_from_slice(p);
                aug.push(dot(p, p) as f32);
            }
            index.add(&aug)?;
        }
        Ok(GroupIndex {
            index,
            metric,
            order,
            dim,
            rows,
        })
    }

    /// The `k` nearest (or farthest) members of each query, with tripmine distances; the rows
    /// are positions within the group.
    pub fn search(&mut self, queries: &[f32], k: usize) -> Result<Candidates> {
        let k = k.min(self.rows).max(1);
        let nq = queries.len() / self.dim;
        let res = match (self.metric, self.order) {
            (Metric::L2sq, Order::Nearest) => self.index.search(queries, k)?,
            (Metric::L2sq, Order::Farthest) => {
                let mut q = Vec::with_capacity(nq * (self.dim + 1));
                for a in queries.chunks_exact(self.dim) {
                    q.extend(a.iter().map(|x| -2.0 * x));
                    q.push(1.0);
                }
                self.index.search(&q, k)?
            }
            (Metric::Cosine, Order::Nearest) => self.index.search(queries, k)?,
            (Metric::Cosine, Order::Farthest) => {
                let q: Vec<f32> = queries.iter().map(|x| -x).collect();
                self.index.search(&q, k)?
            }
        };
        let mut c = Candidates::from_search(res, k);
        for (i, d) in c.dist.iter_mut().enumerate() {
            let q = &queries[(i / k) * self.dim..(i / k + 1) * self.dim];
            *d = match (self.metric, self.order) {
                (Metric::L2sq, Order::Nearest) => *d,
                (Metric::L2sq, Order::Farthest) => dot(q, q) as f32 + *d,
                (Metric::Cosine, Order::Nearest) => 1.0 - *d,
                (Metric::Cosine, Order::Farthest) => 1.0 + *d,
            };
        }
        Ok(c)
    }
}

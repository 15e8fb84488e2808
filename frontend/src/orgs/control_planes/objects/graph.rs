//! `/orgs/:slug/control-planes/:id/graph`: the dependency graph drawn as inline SVG.
//!
//! Layered left to right: objects without dependencies in the first column, every other object
//! one column right of its deepest dependency (longest-path layering), so each edge, drawn from
//! dependent to dependency, points left. Within a column, objects are ordered by the mean
//! position of their neighbours (a few barycentre sweeps) to keep edges from crossing. Nodes
//! are coloured by phase, follow the live stream, and link to the object's page.

use std::collections::{HashMap, VecDeque};

use leptos::prelude::*;
use leptos_meta::Title;

use super::{
    Graph, ObjectKey, ObjectRef, Phase, get_graph, live::watch_objects, object_path, use_cp_id,
};
use crate::{
    components::{ErrorBox, Loading, Refresh},
    orgs::OrgContext,
};

/// Node box size and the gaps between columns and rows, in SVG units (pixels).
const NODE_W: f64 = 190.0;
const NODE_H: f64 = 44.0;
const COL_GAP: f64 = 80.0;
const ROW_GAP: f64 = 16.0;
const MARGIN: f64 = 12.0;
/// Longer names are cut (the full name is the node's tooltip).
const MAX_LABEL: usize = 24;

/// A node with its place.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedNode {
    pub node: ObjectRef,
    /// Column: 0 for objects without dependencies.
    pub layer: usize,
    /// Row within the column.
    pub slot: usize,
    /// Top-left corner.
    pub x: f64,
    pub y: f64,
}

/// An edge from a dependent to a dependency (indices into [`Layout::nodes`]), as an SVG path.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedEdge {
    pub from: usize,
    pub to: usize,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub nodes: Vec<PlacedNode>,
    pub edges: Vec<PlacedEdge>,
    pub width: f64,
    pub height: f64,
}

/// The column of each of `n` nodes: 0 without dependencies, else one more than the deepest
/// dependency. `edges` are `(dependent, dependency)`. A cycle (which the control plane
/// refuses, but a drawing must survive) is broken at the node with the fewest unplaced
/// dependencies.
pub fn longest_path_layers(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut waiting_on = vec![0usize; n];
    let mut dependents = vec![Vec::new(); n];
    for &(from, to) in edges {
        if from < n && to < n && from != to {
            waiting_on[from] += 1;
            dependents[to].push(from);
        }
    }
    let mut layer = vec![0usize; n];
    let mut queued = vec![false; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    queue.iter().for_each(|&i| queued[i] = true);
    loop {
        while let Some(done) = queue.pop_front() {
            for &dependent in &dependents[done] {
                if queued[dependent] {
                    continue;
                }
                layer[dependent] = layer[dependent].max(layer[done] + 1);
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    queued[dependent] = true;
                    queue.push_back(dependent);
                }
            }
        }
        match (0..n)
            .filter(|&i| !queued[i])
            .min_by_key(|&i| (waiting_on[i], i))
        {
            Some(i) => {
                queued[i] = true;
                queue.push_back(i);
            }
            None => break,
        }
    }
    layer
}

/// Places the graph's nodes and routes its edges.
pub fn layout(graph: &Graph) -> Layout {
    // Nodes once each, also those only an edge names, in a stable order.
    let mut refs: Vec<ObjectRef> = Vec::new();
    let mut index: HashMap<ObjectKey, usize> = HashMap::new();
    let mut add = |r: &ObjectRef, refs: &mut Vec<ObjectRef>| -> usize {
        *index.entry(r.key()).or_insert_with(|| {
            refs.push(r.clone());
            refs.len() - 1
        })
    };
    for node in &graph.nodes {
        add(node, &mut refs);
    }
    let mut edges: Vec<(usize, usize)> = graph
        .edges
        .iter()
        .map(|e| (add(&e.from, &mut refs), add(&e.to, &mut refs)))
        .filter(|(from, to)| from != to)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let n = refs.len();
    let layer = longest_path_layers(n, &edges);
    let depth = layer.iter().max().map_or(0, |d| d + 1);

    // Columns, first by name, then by the barycentre of neighbours in sweeps right and left.
    let mut columns: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for i in 0..n {
        columns[layer[i]].push(i);
    }
    for column in &mut columns {
        column.sort_by(|&a, &b| refs[a].key().cmp(&refs[b].key()));
    }
    let mut dependencies = vec![Vec::new(); n];
    let mut dependents = vec![Vec::new(); n];
    for &(from, to) in &edges {
        dependencies[from].push(to);
        dependents[to].push(from);
    }
    let mut slot = vec![0usize; n];
    let renumber = |columns: &[Vec<usize>], slot: &mut [usize]| {
        for column in columns {
            for (row, &i) in column.iter().enumerate() {
                slot[i] = row;
            }
        }
    };
    renumber(&columns, &mut slot);
    for sweep in 0..8 {
        let rightwards = sweep % 2 == 0;
        let order: Vec<usize> = if rightwards {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for c in order {
            let neighbours = if rightwards {
                &dependencies
            } else {
                &dependents
            };
            let centre = |i: usize| -> f64 {
                let near = &neighbours[i];
                if near.is_empty() {
                    slot[i] as f64
                } else {
                    near.iter().map(|&j| slot[j] as f64).sum::<f64>() / near.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize)> = columns[c].iter().map(|&i| (centre(i), i)).collect();
            keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| refs[a.1].key().cmp(&refs[b.1].key()))
            });
            columns[c] = keyed.into_iter().map(|(_, i)| i).collect();
            for (row, &i) in columns[c].iter().enumerate() {
                slot[i] = row;
            }
        }
    }

    // Rows: each node pulled towards the mean height of its neighbours, columns kept in their
    // order and spaced (a few rounds), so a dependency sits beside its dependents.
    let row_h = NODE_H + ROW_GAP;
    let tallest = columns.iter().map(Vec::len).max().unwrap_or(0);
    let mut y = vec![0.0f64; n];
    for column in &columns {
        let offset = (tallest - column.len()) as f64 * row_h / 2.0;
        for (row, &i) in column.iter().enumerate() {
            y[i] = offset + row as f64 * row_h;
        }
    }
    for _ in 0..6 {
        for column in &columns {
            let desired: Vec<f64> = column
                .iter()
                .map(|&i| {
                    let near: Vec<usize> = dependencies[i]
                        .iter()
                        .chain(&dependents[i])
                        .copied()
                        .collect();
                    if near.is_empty() {
                        y[i]
                    } else {
                        near.iter().map(|&j| y[j]).sum::<f64>() / near.len() as f64
                    }
                })
                .collect();
            for (&i, packed) in column.iter().zip(pack(&desired, row_h)) {
                y[i] = packed;
            }
        }
    }
    let top = y.iter().copied().fold(f64::INFINITY, f64::min);
    let bottom = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut placed: Vec<Option<PlacedNode>> = vec![None; n];
    for (c, column) in columns.iter().enumerate() {
        for (row, &i) in column.iter().enumerate() {
            placed[i] = Some(PlacedNode {
                node: refs[i].clone(),
                layer: c,
                slot: row,
                x: MARGIN + c as f64 * (NODE_W + COL_GAP),
                y: MARGIN + y[i] - top,
            });
        }
    }
    let nodes: Vec<PlacedNode> = placed.into_iter().flatten().collect();
    let edges = edges
        .into_iter()
        .map(|(from, to)| PlacedEdge {
            from,
            to,
            path: edge_path(&nodes[from], &nodes[to]),
        })
        .collect();
    Layout {
        nodes,
        edges,
        width: if depth == 0 {
            0.0
        } else {
            2.0 * MARGIN + depth as f64 * NODE_W + (depth - 1) as f64 * COL_GAP
        },
        height: if n == 0 {
            0.0
        } else {
            2.0 * MARGIN + bottom - top + NODE_H
        },
    }
}

/// Positions as close as possible (least squares) to `desired`, in the same order, each at
/// least `gap` below the one before: pool-adjacent-violators on `desired[k] - k·gap`.
fn pack(desired: &[f64], gap: f64) -> Vec<f64> {
    // (sum, count) of runs that share one position before the spacing is added back.
    let mut runs: Vec<(f64, usize)> = Vec::with_capacity(desired.len());
    for (k, d) in desired.iter().enumerate() {
        runs.push((d - k as f64 * gap, 1));
        while let [.., (s1, c1), (s2, c2)] = runs[..] {
            if s1 / c1 as f64 <= s2 / c2 as f64 {
                break;
            }
            runs.truncate(runs.len() - 2);
            runs.push((s1 + s2, c1 + c2));
        }
    }
    runs.into_iter()
        .flat_map(|(sum, count)| std::iter::repeat_n(sum / count as f64, count))
        .enumerate()
        .map(|(k, base)| base + k as f64 * gap)
        .collect()
}

/// A curve from the dependent's left side to the dependency's right side (or, for an edge a
/// broken cycle turned around, between the same sides the other way).
fn edge_path(dependent: &PlacedNode, dependency: &PlacedNode) -> String {
    let (x1, y1) = (dependent.x, dependent.y + NODE_H / 2.0);
    let (x2, y2) = (dependency.x + NODE_W, dependency.y + NODE_H / 2.0);
    let bend = ((x1 - x2).abs() / 2.0).max(COL_GAP / 2.0);
    format!(
        "M {x1:.1} {y1:.1} C {:.1} {y1:.1}, {:.1} {y2:.1}, {x2:.1} {y2:.1}",
        x1 - bend,
        x2 + bend
    )
}

/// `name` cut to [`MAX_LABEL`] characters, with an ellipsis when cut.
fn label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL {
        name.to_owned()
    } else {
        let cut: String = name.chars().take(MAX_LABEL - 1).collect();
        format!("{cut}…")
    }
}

#[component]
pub fn GraphPage() -> impl IntoView {
    let ctx = expect_context::<OrgContext>();
    let cp = use_cp_id();
    let reload = RwSignal::new(0usize);
    let graph = Resource::new(
        move || (cp.get(), Refresh::generation(), reload.get()),
        |(cp, _, _)| get_graph(cp),
    );
    // Nodes shown, to reload when the stream names another (created or deleted elsewhere).
    let shown = StoredValue::new(None::<std::collections::HashSet<ObjectKey>>);
    let live = watch_objects(ctx.slug, cp, move |change| {
        let unknown = shown.with_value(|keys| {
            keys.as_ref()
                .is_some_and(|keys| change.deleted || !keys.contains(&change.key()))
        });
        if unknown {
            shown.set_value(None);
            reload.update(|n| *n += 1);
        }
    });

    view! {
        <Title text="Dependency graph · Qleet"/>
        <section class="card">
            <div class="card-head">
                <h2>"Dependency graph"</h2>
                <a href=move || super::graph_path(&ctx.slug.get(), &cp.get()) rel="external">
                    "Refresh"
                </a>
            </div>
            <p class="hint">
                "Each arrow points from an object to one it depends on; objects without "
                "dependencies are on the left. Click an object to open it."
            </p>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match graph.await {
                        Ok(graph) => {
                            shown.set_value(Some(graph.nodes.iter().map(ObjectRef::key).collect()));
                            drawing(&layout(&graph), &ctx.slug.get_untracked(), &cp.get_untracked(), live)
                        }
                        Err(error) => view! { <ErrorBox error/> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

/// The SVG. Node links and tooltips are built inside `<g>` so the view macro makes them SVG
/// elements rather than HTML ones.
fn drawing(layout: &Layout, slug: &str, cp: &str, live: super::live::ObjectLive) -> AnyView {
    if layout.nodes.is_empty() {
        return view! { <p class="muted">"No objects yet."</p> }.into_any();
    }
    let edges = layout
        .edges
        .iter()
        .map(|edge| {
            let from = layout.nodes[edge.from].node.key().to_string();
            let to = layout.nodes[edge.to].node.key().to_string();
            view! {
                <path
                    class="edge"
                    d=edge.path.clone()
                    data-from=from
                    data-to=to
                    fill="none"
                    stroke="#98a2b3"
                    stroke-width="1.5"
                    marker-end="url(#graph-arrow)"
                />
            }
        })
        .collect_view();
    let nodes = layout
        .nodes
        .iter()
        .map(|placed| {
            let key = placed.node.key();
            let loaded = placed
                .node
                .phase
                .clone()
                .unwrap_or_else(|| Phase("UNKNOWN".into()));
            let phase = Memo::new({
                let key = key.clone();
                move |_| {
                    live.with(|heard| heard.get(&key).map(|c| c.phase.clone()))
                        .unwrap_or_else(|| loaded.clone())
                }
            });
            let href = object_path(slug, cp, &key.kind, &key.name);
            let (x, y) = (placed.x, placed.y);
            let title = move || format!("{key} — {}", phase.with(Phase::label));
            view! {
                <g
                    class="node"
                    data-key=placed.node.key().to_string()
                    data-phase=move || phase.with(|p| p.as_str().to_owned())
                >
                    <a href=href>
                        <title>{title}</title>
                        <rect
                            x=format!("{x:.1}")
                            y=format!("{y:.1}")
                            width=NODE_W.to_string()
                            height=NODE_H.to_string()
                            rx="6"
                            fill=move || phase.with(|p| p.colours().0)
                            stroke=move || phase.with(|p| p.colours().1)
                            stroke-width="1.5"
                        />
                        <text x=format!("{:.1}", x + 10.0) y=format!("{:.1}", y + 17.0) class="kind">
                            {placed.node.kind.clone()}
                        </text>
                        <text x=format!("{:.1}", x + 10.0) y=format!("{:.1}", y + 35.0) class="name">
                            {label(&placed.node.name)}
                        </text>
                    </a>
                </g>
            }
        })
        .collect_view();
    let (width, height) = (layout.width, layout.height);
    let legend = [
        "PENDING",
        "WAITING",
        "PROVISIONING",
        "READY",
        "FAILED",
        "DELETING",
    ]
    .into_iter()
    .map(|p| {
        let phase = Phase(p.to_owned());
        view! {
            <li>
                // Drawn, not styled: the Content-Security-Policy allows no inline styles.
                <svg class="swatch" viewBox="0 0 14 14" aria-hidden="true">
                    <rect
                        x="1"
                        y="1"
                        width="12"
                        height="12"
                        rx="3"
                        fill=phase.colours().0
                        stroke=phase.colours().1
                        stroke-width="1.5"
                    ></rect>
                </svg>
                {phase.label()}
            </li>
        }
    })
    .collect_view();
    let count = layout.nodes.len();
    view! {
        <div class="graph-scroll">
            <svg
                id="object-graph"
                class="object-graph"
                xmlns="http://www.w3.org/2000/svg"
                role="img"
                aria-label=format!("Dependency graph of {count} objects")
                width=format!("{width:.0}")
                height=format!("{height:.0}")
                viewBox=format!("0 0 {width:.0} {height:.0}")
            >
                <defs>
                    <marker
                        id="graph-arrow"
                        viewBox="0 0 10 10"
                        refX="10"
                        refY="5"
                        markerWidth="7"
                        markerHeight="7"
                        orient="auto"
                    >
                        <path d="M 0 0 L 10 5 L 0 10 z" fill="#98a2b3"/>
                    </marker>
                </defs>
                {edges}
                {nodes}
            </svg>
        </div>
        <ul class="legend">{legend}</ul>
    }
    .into_any()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::orgs::control_planes::objects::GraphEdge;

    fn node(key: &str) -> ObjectRef {
        let (kind, name) = key.split_once('/').unwrap();
        ObjectRef {
            kind: kind.into(),
            name: name.into(),
            phase: Some(Phase("READY".into())),
        }
    }

    fn graph(nodes: &[&str], edges: &[(&str, &str)]) -> Graph {
        Graph {
            nodes: nodes.iter().map(|k| node(k)).collect(),
            edges: edges
                .iter()
                .map(|(from, to)| GraphEdge {
                    from: node(from),
                    to: node(to),
                })
                .collect(),
        }
    }

    fn placed<'a>(layout: &'a Layout, key: &str) -> &'a PlacedNode {
        layout
            .nodes
            .iter()
            .find(|p| p.node.key().to_string() == key)
            .unwrap()
    }

    #[test]
    fn a_node_sits_one_column_right_of_its_deepest_dependency() {
        // 0 ← 1 ← 2, and 3 depends on 0 and 2: the longest path decides.
        assert_eq!(
            longest_path_layers(5, &[(1, 0), (2, 1), (3, 0), (3, 2)]),
            vec![0, 1, 2, 3, 0]
        );
        assert_eq!(longest_path_layers(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn cycles_and_bad_edges_do_not_hang_or_panic() {
        let layers = longest_path_layers(3, &[(0, 1), (1, 2), (2, 0), (1, 1), (7, 0)]);
        assert_eq!(layers.len(), 3);
        let mut sorted = layers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            3,
            "a broken cycle still spreads out: {layers:?}"
        );
    }

    #[test]
    fn an_app_is_laid_out_in_dependency_columns() {
        let g = graph(
            &[
                "AwsAccount/main",
                "ObjectStorageBucket/assets",
                "RelationalDatabase/db",
                "KubernetesRuntime/eks",
                "Workload/web",
            ],
            &[
                ("ObjectStorageBucket/assets", "AwsAccount/main"),
                ("RelationalDatabase/db", "AwsAccount/main"),
                ("KubernetesRuntime/eks", "AwsAccount/main"),
                ("Workload/web", "ObjectStorageBucket/assets"),
                ("Workload/web", "RelationalDatabase/db"),
                ("Workload/web", "KubernetesRuntime/eks"),
            ],
        );
        let layout = layout(&g);
        assert_eq!(placed(&layout, "AwsAccount/main").layer, 0);
        assert_eq!(placed(&layout, "ObjectStorageBucket/assets").layer, 1);
        assert_eq!(placed(&layout, "Workload/web").layer, 2);
        assert_eq!(layout.edges.len(), 6);
        // Every edge points left: dependent right of its dependency.
        for edge in &layout.edges {
            assert!(layout.nodes[edge.from].x > layout.nodes[edge.to].x);
            assert!(edge.path.starts_with("M "));
        }
        // No two nodes overlap.
        for (i, a) in layout.nodes.iter().enumerate() {
            for b in &layout.nodes[i + 1..] {
                assert!(
                    (a.x - b.x).abs() >= NODE_W || (a.y - b.y).abs() >= NODE_H,
                    "{a:?} overlaps {b:?}"
                );
            }
        }
        // The drawing holds every node.
        for p in &layout.nodes {
            assert!(p.x + NODE_W <= layout.width && p.y + NODE_H <= layout.height);
        }
    }

    #[test]
    fn ordering_untangles_two_parallel_chains() {
        // a1 ← a2 and b1 ← b2, named so that alphabetical order alone would cross them.
        let g = graph(
            &["X/a1", "X/b1", "Y/z-b2", "Y/a-a2"],
            &[("Y/a-a2", "X/a1"), ("Y/z-b2", "X/b1")],
        );
        let layout = layout(&g);
        assert_eq!(placed(&layout, "X/a1").slot, placed(&layout, "Y/a-a2").slot);
        assert_eq!(placed(&layout, "X/b1").slot, placed(&layout, "Y/z-b2").slot);
        let crossed = graph(
            &["X/a1", "X/b1", "Y/a2", "Y/b2"],
            &[("Y/a2", "X/b1"), ("Y/b2", "X/a1")],
        );
        let layout = super::layout(&crossed);
        assert_eq!(placed(&layout, "X/b1").slot, placed(&layout, "Y/a2").slot);
    }

    #[test]
    fn fifty_nodes_stay_within_a_readable_drawing() {
        // A web app repeated: 10 accounts, each with 4 dependents.
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        for i in 0..10 {
            let account = format!("AwsAccount/a{i}");
            nodes.push(account.clone());
            for kind in [
                "ObjectStorageBucket",
                "RelationalDatabase",
                "Workload",
                "Gateway",
            ] {
                let key = format!("{kind}/n{i}");
                nodes.push(key.clone());
                edges.push((key, account.clone()));
            }
        }
        let g = graph(
            &nodes.iter().map(String::as_str).collect::<Vec<_>>(),
            &edges
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect::<Vec<_>>(),
        );
        let layout = layout(&g);
        assert_eq!(layout.nodes.len(), 50);
        assert_eq!(layout.nodes.iter().map(|p| p.layer).max(), Some(1));
        // Two columns, 40 rows: narrow, and little taller than the 40 dependents stacked.
        assert!(layout.width < 600.0, "{}", layout.width);
        assert!(
            layout.height < 45.0 * (NODE_H + ROW_GAP),
            "{}",
            layout.height
        );
        // Accounts sit near the middle of their dependents.
        let a0 = placed(&layout, "AwsAccount/a0");
        let kids: Vec<f64> = layout
            .nodes
            .iter()
            .filter(|p| p.node.name == "n0")
            .map(|p| p.y)
            .collect();
        let mean = kids.iter().sum::<f64>() / kids.len() as f64;
        assert!(
            (a0.y - mean).abs() <= 2.0 * (NODE_H + ROW_GAP),
            "{} vs {mean}",
            a0.y
        );
    }

    #[test]
    fn packing_keeps_order_and_spacing_and_centres_crowds() {
        assert_eq!(pack(&[5.0, 5.0, 5.0], 10.0), vec![-5.0, 5.0, 15.0]);
        assert_eq!(pack(&[0.0, 100.0], 10.0), vec![0.0, 100.0]);
        assert_eq!(pack(&[20.0, 0.0], 10.0), vec![5.0, 15.0]);
        assert!(pack(&[], 10.0).is_empty());
    }

    #[test]
    fn nodes_named_only_by_edges_are_drawn_and_long_names_cut() {
        let g = graph(&["Workload/web"], &[("Workload/web", "AwsAccount/main")]);
        let layout = layout(&g);
        assert_eq!(layout.nodes.len(), 2);
        assert_eq!(label("short"), "short");
        let long = label("a-very-long-object-name-that-goes-on-and-on");
        assert_eq!(long.chars().count(), MAX_LABEL);
        assert!(long.ends_with('…'));
        assert_eq!(super::layout(&graph(&[], &[])).width, 0.0);
    }
}

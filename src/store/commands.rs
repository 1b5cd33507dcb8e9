//! Every write the store makes, one type each. A command says what it does
//! to the database and what it answers; the writer (`writer.rs`) runs any
//! of them in its batches and hands the caller exactly that answer, so no
//! caller can be answered for another request. Webhooks are the one write
//! that is not a command here: the writer plans a batch of them together
//! (`ingest.rs`).

use super::{
    confirm::{self, ConfirmSummary, Settlement},
    outbox::{self, ReplayChunk, ReplayedChunk, SinkRoute},
    prune::{self, PruneCutoffs, PruneReport, PruneStep},
    reconcile::{self, ReconcileSummary, RemoteReport},
    sessions::{self, NewSession},
    sql::{Conn, DbResult},
    submissions::{self, Claim, Submission, SubmissionResult},
    tokens::{self, TokenKind, Tokens},
};

/// One write: run inside the writer's transaction (perhaps again, in a
/// savepoint of its own, when its batch is redone), answered after the
/// commit.
pub(super) trait Command: Send + 'static {
    type Answer: Send + 'static;

    fn run(&self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<Self::Answer>;

    /// Whether committing `answer` made deliveries due, so the delivery
    /// workers look again.
    fn wakes_deliveries(_answer: &Self::Answer) -> bool {
        false
    }
}

/// The generated tokens, made on first use.
pub(super) struct LoadTokens;

impl Command for LoadTokens {
    type Answer = Tokens;
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<Tokens> {
        tokens::load_or_generate(conn)
    }
}

/// A new value for one generated token; answers it.
pub(super) struct RotateToken(pub TokenKind);

impl Command for RotateToken {
    type Answer = String;
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<String> {
        tokens::rotate(conn, self.0)
    }
}

/// A dead or delivered delivery back to pending; whether it went.
pub(super) struct RetryDelivery(pub i64);

impl Command for RetryDelivery {
    type Answer = bool;
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<bool> {
        outbox::retry(conn, self.0)
    }
    fn wakes_deliveries(retried: &bool) -> bool {
        *retried
    }
}

/// One chunk of a replay.
pub(super) struct Replay(pub ReplayChunk);

impl Command for Replay {
    type Answer = ReplayedChunk;
    fn run(&self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<ReplayedChunk> {
        outbox::replay_chunk(conn, &self.0, routes)
    }
    fn wakes_deliveries(done: &ReplayedChunk) -> bool {
        done.enqueued > 0
    }
}

/// What Segmind's API reported, applied under the state rules.
pub(super) struct Reconcile(pub RemoteReport);

impl Command for Reconcile {
    type Answer = ReconcileSummary;
    fn run(&self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<ReconcileSummary> {
        reconcile::apply(conn, &self.0, routes)
    }
    fn wakes_deliveries(summary: &ReconcileSummary) -> bool {
        summary.deliveries > 0
    }
}

/// Claims waiting for Segmind's API, settled or scheduled again.
pub(super) struct Settle(pub Vec<Settlement>);

impl Command for Settle {
    type Answer = ConfirmSummary;
    fn run(&self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<ConfirmSummary> {
        confirm::settle(conn, &self.0, routes)
    }
    fn wakes_deliveries(summary: &ConfirmSummary) -> bool {
        summary.deliveries > 0
    }
}

/// One small step of pruning.
pub(super) struct Prune(pub PruneCutoffs);

impl Command for Prune {
    type Answer = PruneStep;
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<PruneStep> {
        prune::step(conn, &self.0)
    }
}

/// What a whole prune did, for `/v1/status`.
pub(super) struct RecordPrune(pub PruneReport);

impl Command for RecordPrune {
    type Answer = ();
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<()> {
        prune::record(conn, &self.0)
    }
}

/// A job tunehook submitted, recorded `REQUESTED`.
pub(super) struct Submit(pub Submission);

impl Command for Submit {
    type Answer = SubmissionResult;
    fn run(&self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<SubmissionResult> {
        submissions::record(conn, &self.0, routes)
    }
    fn wakes_deliveries(result: &SubmissionResult) -> bool {
        result.deliveries > 0
    }
}

/// A model's access, on a known job; `None` when there is no such job,
/// else the deliveries made.
pub(super) struct RecordAccess {
    pub finetune_id: String,
    pub public: bool,
}

impl Command for RecordAccess {
    type Answer = Option<usize>;
    fn run(&self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<Option<usize>> {
        submissions::record_access(conn, &self.finetune_id, self.public, routes)
    }
    fn wakes_deliveries(deliveries: &Option<usize>) -> bool {
        deliveries.is_some_and(|n| n > 0)
    }
}

/// An `Idempotency-Key` claimed for a request.
pub(super) struct ClaimKey {
    pub key: String,
    pub request_sha256: String,
}

impl Command for ClaimKey {
    type Answer = Claim;
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<Claim> {
        submissions::claim(conn, &self.key, &self.request_sha256)
    }
}

/// A claim given up.
pub(super) struct ReleaseKey(pub String);

impl Command for ReleaseKey {
    type Answer = ();
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<()> {
        submissions::release(conn, &self.0)
    }
}

/// The answer kept for a key.
pub(super) struct StoreAnswer {
    pub key: String,
    pub response: String,
}

impl Command for StoreAnswer {
    type Answer = ();
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<()> {
        submissions::store_answer(conn, &self.key, &self.response)
    }
}

/// A dashboard session opened.
pub(super) struct OpenSession(pub NewSession);

impl Command for OpenSession {
    type Answer = ();
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<()> {
        sessions::open(conn, &self.0)
    }
}

/// A dashboard session ended.
pub(super) struct EndSession(pub String);

impl Command for EndSession {
    type Answer = ();
    fn run(&self, conn: &dyn Conn, _: &[SinkRoute]) -> DbResult<()> {
        sessions::end(conn, &self.0)
    }
}

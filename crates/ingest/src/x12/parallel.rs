//! Reading the pieces of one X12 file on several threads, results in file order, in bounded
//! memory whatever the size of a piece.
//!
//! One thread (the caller's) hands the results to `emit` in file order; `threads` workers take
//! the pieces in order from the [`Splitter`] and read and map them. Each piece has a slot for
//! its results. The piece the caller is at streams through its slot however large it is (a
//! transaction set of a million claims is one piece): its worker waits when the slot holds
//! [`SLOT_ITEMS`] results the caller has not taken yet. Workers on pieces further on go on
//! until all the slots together hold [`BUDGET_PER_THREAD`] results per thread (plus one
//! slot), then wait for the caller; so a worker rarely waits on a small piece, and never holds
//! all of a large one. Workers take a piece only within `2 × threads + 2` pieces of the one
//! the caller is at.
//!
//! Memory is therefore about `(threads + 1) × BUDGET_PER_THREAD + SLOT_ITEMS` mapped results,
//! plus one batch per worker, whatever the file and its envelopes look like.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::parse::{self, Piece, Splitter};
use crate::{FileSummary, Item};

/// Results a worker keeps before handing them to its slot.
const BATCH: usize = 64;
/// Results the caller's slot holds before its worker waits for the caller to take them.
const SLOT_ITEMS: usize = 1024;
/// Results all the other slots hold together, per thread (and one more), before their
/// workers wait.
const BUDGET_PER_THREAD: usize = 2048;

/// One piece's results on their way to the caller.
struct Slot<T> {
    items: VecDeque<T>,
    /// The piece is read; `summary` holds its summary until the caller takes it.
    done: bool,
    summary: FileSummary,
}

struct State<T> {
    /// Slots of the pieces taken and not yet wholly handed on, the caller's first.
    slots: VecDeque<Slot<T>>,
    /// Number of the piece the caller is at (the first of `slots`).
    head: usize,
    /// Pieces taken so far.
    taken: usize,
    /// Results in all the slots.
    buffered: usize,
    /// How many results the slots after the caller's may hold together.
    budget: usize,
    /// The splitter has no more pieces.
    all_taken: bool,
    /// Stop everything: an error, or a worker that panicked.
    stop: bool,
    error: Option<io::Error>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A worker that panicked while holding the lock left the state as it was between two
        // steps; the panic guard has set `stop`, so the state is only read to wind down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State<T>>) -> MutexGuard<'a, State<T>> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, e: io::Error) {
        let mut st = self.lock();
        st.stop = true;
        st.error.get_or_insert(e);
        self.changed.notify_all();
    }

    /// Hand `batch` to slot `k`, waiting while the caller's slot (`k` is the caller's piece)
    /// or the budget of the others is full. Returns false to stop.
    fn give(&self, k: usize, batch: &mut Vec<T>) -> bool {
        let mut st = self.lock();
        loop {
            if st.stop {
                batch.clear();
                return false;
            }
            let head = st.head;
            let room = if k == head {
                st.slots[0].items.len() < SLOT_ITEMS
            } else {
                st.buffered - st.slots[0].items.len() < st.budget
            };
            if room {
                st.buffered += batch.len();
                st.slots[k - head].items.extend(batch.drain(..));
                self.changed.notify_all();
                return true;
            }
            st = self.wait(st);
        }
    }
}

/// Sets `stop` if a worker unwinds, so that the caller does not wait for it forever.
struct PanicGuard<'a, T>(&'a Shared<T>);

impl<T> Drop for PanicGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(io::Error::other("an X12 reader thread panicked"));
        }
    }
}

/// Read `path` cut by `splitter` on `threads` workers, mapping each item with `map`; `emit`
/// gets the mapped items in file order, on the calling thread. Returns the file's summary.
pub(crate) fn read<T: Send>(
    path: &Path,
    name: &str,
    splitter: Splitter<File>,
    threads: usize,
    map: &(dyn Fn(Item) -> T + Sync),
    emit: &mut dyn FnMut(T),
) -> io::Result<FileSummary> {
    let window = 2 * threads + 2;
    let shared = Shared {
        state: Mutex::new(State {
            slots: VecDeque::new(),
            head: 0,
            taken: 0,
            buffered: 0,
            budget: (threads + 1) * BUDGET_PER_THREAD,
            all_taken: false,
            stop: false,
            error: None,
        }),
        changed: Condvar::new(),
    };
    let splitter = Mutex::new(splitter);
    let work = || {
        let _guard = PanicGuard(&shared);
        while let Some((k, piece)) = next_piece(&shared, &splitter, window) {
            if let Err(e) = read_piece(path, name, k, piece, &shared, map) {
                shared.fail(e);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(work);
        }
        // If `emit` panics, the workers must not wait for it: the scope waits for them.
        let _guard = PanicGuard(&shared);
        let result = hand_on(&shared, emit);
        if result.is_err() {
            shared.fail(io::Error::other("stopped"));
        }
        result
    })
}

/// Take the next piece and its slot, once it is within `window` of the caller's piece.
fn next_piece<T>(
    shared: &Shared<T>,
    splitter: &Mutex<Splitter<File>>,
    window: usize,
) -> Option<(usize, Piece)> {
    // Holding the splitter keeps the pieces' numbers in file order.
    let mut sp = splitter.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut st = shared.lock();
        while !st.stop && !st.all_taken && st.taken >= st.head + window {
            st = shared.wait(st);
        }
        if st.stop || st.all_taken {
            return None;
        }
    }
    let next = sp.next_piece();
    let mut st = shared.lock();
    match next {
        Ok(Some(piece)) => {
            let k = st.taken;
            st.taken += 1;
            st.slots.push_back(Slot {
                items: VecDeque::new(),
                done: false,
                summary: FileSummary::default(),
            });
            Some((k, piece))
        }
        Ok(None) => {
            st.all_taken = true;
            shared.changed.notify_all();
            None
        }
        Err(e) => {
            st.stop = true;
            st.error.get_or_insert(e);
            shared.changed.notify_all();
            None
        }
    }
}

/// Read piece `k`, handing its mapped items to its slot in batches.
fn read_piece<T>(
    path: &Path,
    name: &str,
    k: usize,
    piece: Piece,
    shared: &Shared<T>,
    map: &(dyn Fn(Item) -> T + Sync),
) -> io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(piece.start))?;
    let rdr = f.take(piece.end - piece.start);
    let mut batch = Vec::with_capacity(BATCH);
    let mut going = true;
    let summary = parse::run_piece(name, rdr, piece, &mut |item| {
        if going {
            batch.push(map(item));
            if batch.len() == BATCH {
                going = shared.give(k, &mut batch);
            }
        }
    })?;
    if going && !batch.is_empty() {
        shared.give(k, &mut batch);
    }
    let mut st = shared.lock();
    if !st.stop {
        let head = st.head;
        let slot = &mut st.slots[k - head];
        slot.done = true;
        slot.summary = summary;
        shared.changed.notify_all();
    }
    Ok(())
}

/// The caller's side: hand each slot's items to `emit` in order, and add up the summaries.
fn hand_on<T>(shared: &Shared<T>, emit: &mut dyn FnMut(T)) -> io::Result<FileSummary> {
    let mut total = FileSummary::default();
    let mut st = shared.lock();
    loop {
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.stop {
            return Err(io::Error::other("an X12 reader thread stopped"));
        }
        let all_taken = st.all_taken;
        match st.slots.front_mut() {
            Some(slot) if !slot.items.is_empty() => {
                let items = std::mem::take(&mut slot.items);
                st.buffered -= items.len();
                shared.changed.notify_all();
                drop(st);
                for t in items {
                    emit(t);
                }
                st = shared.lock();
                continue;
            }
            Some(slot) if slot.done => {
                let s = std::mem::take(&mut slot.summary);
                st.slots.pop_front();
                st.head += 1;
                shared.changed.notify_all();
                total.bytes += s.bytes;
                total.units += s.units;
                total.notices.extend(s.notices);
                continue;
            }
            None if all_taken => return Ok(total),
            _ => {}
        }
        st = shared.wait(st);
    }
}

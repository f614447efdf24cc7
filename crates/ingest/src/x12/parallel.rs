//! Reading the pieces of X12 files on several threads, results in file order, in bounded
//! memory whatever the size of a piece.
//!
//! One thread (the caller's) hands each file's results to `on` in file order, then the file's
//! summary; `threads` workers take the pieces in order, file after file (a [`Splitter`] per
//! file), and read and map them, so that small files are read side by side as the pieces of a
//! large one are. Each piece has a slot for its results. The piece the caller is at streams
//! through its slot however large it is (a transaction set of a million claims is one piece):
//! its worker waits when the slot holds [`SLOT_ITEMS`] results the caller has not taken yet.
//! Workers on pieces further on go on until all the slots together hold [`BUDGET_PER_THREAD`]
//! results per thread (plus one thread's worth, and never more than [`BUDGET_MAX`]), then wait
//! for the caller; so a worker rarely waits on a small piece, and never holds all of a large
//! one. Workers take a piece only within `2 × threads + 2` pieces of the one the caller is at.
//!
//! Memory is therefore at most about `BUDGET_MAX + SLOT_ITEMS` mapped results (a mapped 837P
//! claim holds its EOB's JSON, about 5 KB, and its search values), plus one batch per worker,
//! whatever the files and their envelopes look like and however many cores the machine has.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::parse::{self, Piece, Splitter};
use super::{FileEvent, PIECE_BYTES};
use crate::{FileSummary, Item};

/// Results a worker keeps before handing them to its slot.
const BATCH: usize = 64;
/// Results the caller's slot holds before its worker waits for the caller to take them.
const SLOT_ITEMS: usize = 1024;
/// Results all the other slots hold together, per thread (and one more), before their
/// workers wait.
const BUDGET_PER_THREAD: usize = 2048;
/// The most results all the other slots hold together, whatever the number of threads.
const BUDGET_MAX: usize = 16_384;

/// One piece's results on their way to the caller.
struct Slot<T> {
    /// Index of the piece's file.
    file: usize,
    /// The slot marks the end of its file: it holds nothing, and is done from the start.
    end_of_file: bool,
    /// The file could not be opened or cut here: the read stops when the caller gets here.
    failed: Option<io::Error>,
    items: VecDeque<T>,
    /// The piece is read; `summary` holds its summary until the caller takes it.
    done: bool,
    summary: FileSummary,
}

impl<T> Slot<T> {
    fn new(file: usize, end_of_file: bool) -> Self {
        Self {
            file,
            end_of_file,
            failed: None,
            items: VecDeque::new(),
            done: end_of_file,
            summary: FileSummary::default(),
        }
    }
}

/// The pieces of the files, in order, each file followed by its end.
struct Pieces<'a> {
    paths: &'a [&'a Path],
    /// The file being cut, and its splitter.
    current: Option<(usize, Splitter<File>)>,
    /// The next file to open.
    next_file: usize,
}

/// What a worker takes next.
enum Next {
    Piece(usize, Piece),
    EndOfFile(usize),
}

impl Pieces<'_> {
    /// The next piece, or the end of the current file; `None` after the last file. An error
    /// names its file.
    fn next(&mut self) -> Result<Option<Next>, (usize, io::Error)> {
        if let Some((f, sp)) = &mut self.current {
            let f = *f;
            return match sp.next_piece() {
                Ok(Some(p)) => Ok(Some(Next::Piece(f, p))),
                Ok(None) => {
                    self.current = None;
                    Ok(Some(Next::EndOfFile(f)))
                }
                Err(e) => Err((f, e)),
            };
        }
        let f = self.next_file;
        let Some(path) = self.paths.get(f) else {
            return Ok(None);
        };
        self.next_file += 1;
        let file = File::open(path).map_err(|e| (f, e))?;
        self.current = Some((f, Splitter::new(file, PIECE_BYTES)));
        self.next()
    }
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
    /// The first error, and the index of its file (`None` for a panic).
    error: Option<(Option<usize>, io::Error)>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// The caller waits here for its slot to fill or end, or for the pieces to run out.
    caller: Condvar,
    /// Workers wait here for room in a slot or the budget, or for the window to move.
    workers: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A worker that panicked while holding the lock left the state as it was between two
        // steps; the panic guard has set `stop`, so the state is only read to wind down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_caller<'a>(&self, g: MutexGuard<'a, State<T>>) -> MutexGuard<'a, State<T>> {
        self.caller.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn wait_workers<'a>(&self, g: MutexGuard<'a, State<T>>) -> MutexGuard<'a, State<T>> {
        self.workers.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, file: Option<usize>, e: io::Error) {
        let mut st = self.lock();
        st.stop = true;
        st.error.get_or_insert((file, e));
        self.caller.notify_all();
        self.workers.notify_all();
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
                // Only the caller's slot wakes the caller; the others wait for their turn.
                if k == head {
                    self.caller.notify_one();
                }
                return true;
            }
            st = self.wait_workers(st);
        }
    }
}

/// Sets `stop` if a worker unwinds, so that the caller does not wait for it forever.
struct PanicGuard<'a, T>(&'a Shared<T>);

impl<T> Drop for PanicGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(None, io::Error::other("an X12 reader thread panicked"));
        }
    }
}

/// Read `paths` on `threads` workers, mapping each item with `map`; `on` gets, with the file's
/// index, each file's mapped items in order and then its summary, on the calling thread. An
/// error names the index of its file (`None` when a thread panicked).
pub(crate) fn read<T: Send>(
    paths: &[&Path],
    threads: usize,
    map: &(dyn Fn(Item) -> T + Sync),
    on: &mut dyn FnMut(usize, FileEvent<T>) -> ControlFlow<()>,
) -> Result<(), (Option<usize>, io::Error)> {
    let window = 2 * threads + 2;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let shared = Shared {
        state: Mutex::new(State {
            slots: VecDeque::new(),
            head: 0,
            taken: 0,
            buffered: 0,
            budget: ((threads + 1) * BUDGET_PER_THREAD).min(BUDGET_MAX),
            all_taken: false,
            stop: false,
            error: None,
        }),
        caller: Condvar::new(),
        workers: Condvar::new(),
    };
    let pieces = Mutex::new(Pieces {
        paths,
        current: None,
        next_file: 0,
    });
    let work = || {
        let _guard = PanicGuard(&shared);
        while let Some((k, f, piece)) = next_piece(&shared, &pieces, window) {
            if let Err(e) = read_piece(paths[f], &names[f], k, piece, &shared, map) {
                shared.fail(Some(f), e);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(work);
        }
        // If `on` panics, the workers must not wait for it: the scope waits for them.
        let _guard = PanicGuard(&shared);
        let result = hand_on(&shared, on);
        // Done, failed or stopped by `on`: the workers stop too.
        let mut st = shared.lock();
        st.stop = true;
        shared.caller.notify_all();
        shared.workers.notify_all();
        drop(st);
        result
    })
}

/// Take the next piece and its slot, once it is within `window` of the caller's piece; an end
/// of file takes a slot of its own and no worker.
fn next_piece<T>(
    shared: &Shared<T>,
    pieces: &Mutex<Pieces<'_>>,
    window: usize,
) -> Option<(usize, usize, Piece)> {
    // Holding the pieces keeps their numbers in file order.
    let mut source = pieces.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        {
            let mut st = shared.lock();
            while !st.stop && !st.all_taken && st.taken >= st.head + window {
                st = shared.wait_workers(st);
            }
            if st.stop || st.all_taken {
                return None;
            }
        }
        let next = source.next();
        let mut st = shared.lock();
        match next {
            Ok(Some(Next::Piece(f, piece))) => {
                let k = st.taken;
                st.taken += 1;
                st.slots.push_back(Slot::new(f, false));
                return Some((k, f, piece));
            }
            Ok(Some(Next::EndOfFile(f))) => {
                st.taken += 1;
                st.slots.push_back(Slot::new(f, true));
                shared.caller.notify_one();
            }
            Ok(None) => {
                st.all_taken = true;
                shared.caller.notify_one();
                shared.workers.notify_all();
                return None;
            }
            Err((f, e)) => {
                // In its place: the files before it are read to their end first.
                let mut slot = Slot::new(f, true);
                slot.failed = Some(e);
                st.slots.push_back(slot);
                st.taken += 1;
                st.all_taken = true;
                shared.caller.notify_one();
                shared.workers.notify_all();
                return None;
            }
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
        shared.caller.notify_one();
    }
    Ok(())
}

/// The caller's side: hand each slot's items to `on` in order, and each file's summary, added
/// up over its pieces, at its end.
fn hand_on<T>(
    shared: &Shared<T>,
    on: &mut dyn FnMut(usize, FileEvent<T>) -> ControlFlow<()>,
) -> Result<(), (Option<usize>, io::Error)> {
    let mut total = FileSummary::default();
    let mut st = shared.lock();
    loop {
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.stop {
            return Err((None, io::Error::other("an X12 reader thread stopped")));
        }
        let all_taken = st.all_taken;
        match st.slots.front_mut() {
            Some(slot) if !slot.items.is_empty() => {
                let (f, items) = (slot.file, std::mem::take(&mut slot.items));
                st.buffered -= items.len();
                shared.workers.notify_all();
                drop(st);
                for t in items {
                    if on(f, FileEvent::Item(t)).is_break() {
                        return Ok(());
                    }
                }
                st = shared.lock();
                continue;
            }
            Some(slot) if slot.failed.is_some() => {
                let f = slot.file;
                let e = slot
                    .failed
                    .take()
                    .unwrap_or_else(|| io::Error::other("failed"));
                return Err((Some(f), e));
            }
            Some(slot) if slot.done => {
                let (f, end, s) = (
                    slot.file,
                    slot.end_of_file,
                    std::mem::take(&mut slot.summary),
                );
                st.slots.pop_front();
                st.head += 1;
                shared.workers.notify_all();
                total.bytes += s.bytes;
                total.units += s.units;
                total.notices.extend(s.notices);
                if end {
                    drop(st);
                    if on(f, FileEvent::Done(std::mem::take(&mut total))).is_break() {
                        return Ok(());
                    }
                    st = shared.lock();
                }
                continue;
            }
            None if all_taken => return Ok(()),
            _ => {}
        }
        st = shared.wait_caller(st);
    }
}

//! The writer's books on its heap: which blocks are free, who holds the
//! others, and which free block to hand out next. Private to the writer's
//! process, so nothing a reader writes can corrupt it.
//!
//! # Invariants
//!
//! 1. Every byte of the heap is in exactly one of: an allocated block, a
//!    recently freed block, or a free range. Allocated and recently freed
//!    blocks start at multiples of [`BLOCK_ALIGN`] and have capacities that
//!    are too, so free ranges do as well.
//! 2. An allocated block has at least one holder. Holders are bits: [`WRITER`]
//!    while a GstBuffer of the writer's process wraps the block, and one bit
//!    per reader slot ([`reader`]) from when a record naming it is sent to
//!    that reader until the reader releases it. The block is freed when the
//!    last bit clears, in whatever order that happens.
//! 3. A release is honoured only if the releasing reader's bit is set, so a
//!    reader that releases a block it never held, releases one twice, or
//!    names an offset that is not a block, changes nothing and is reported.
//!    Dropping a reader clears its bit everywhere, which returns every block
//!    it held.
//!
//! # Which block comes next
//!
//! Freed blocks go on a short LIFO stack first, and an allocation takes the
//! most recently freed block that fits (and is not more than twice the size
//! asked for). Raw video, with one frame size per caps, therefore cycles
//! through only as many blocks as are in flight, and those stay in the CPU
//! cache however large the heap is. Behind the stack is a first-fit
//! allocator over offset-ordered free ranges, coalesced on free, which
//! serves the first allocation of each size and variable-size streams; the
//! stack spills into it when it is full or when nothing else fits. First
//! fit also favours low offsets, so the part of the heap in use stays
//! compact.

use std::collections::HashMap;

use super::layout::BLOCK_ALIGN;

/// Who holds a block: one bit each.
pub type Holders = u32;
/// The writer itself: a GstBuffer in its process still wraps the block.
pub const WRITER: Holders = 1;
/// Reader slots the holder bits have room for.
pub const MAX_READERS: u32 = 31;

/// The holder bit of reader slot `slot` (below [`MAX_READERS`]).
pub fn reader(slot: u32) -> Holders {
    debug_assert!(slot < MAX_READERS);
    2 << slot
}

/// Freed blocks kept on the LIFO stack before they spill into the ranges.
const RECENT_MAX: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Block {
    capacity: u64,
    holders: Holders,
}

/// A release the books do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("released heap offset {0}, which is not an allocated block")]
    NoSuchBlock(u64),
    #[error("released heap block {0}, which it does not hold")]
    NotHeld(u64),
}

/// The allocator and reference counts of one heap.
#[derive(Debug)]
pub struct HeapBooks {
    size: u64,
    blocks: HashMap<u64, Block>,
    /// Free ranges (start, len), ordered by start, never adjacent.
    ranges: Vec<(u64, u64)>,
    /// Recently freed blocks (offset, capacity), most recent last.
    recent: Vec<(u64, u64)>,
    allocated_bytes: u64,
}

impl HeapBooks {
    /// Books for a heap of `size` bytes, all free.
    pub fn new(size: u64) -> Self {
        let size = size - size % BLOCK_ALIGN;
        let mut ranges = Vec::with_capacity(RECENT_MAX * 2);
        if size > 0 {
            ranges.push((0, size));
        }
        Self {
            size,
            blocks: HashMap::with_capacity(256),
            ranges,
            recent: Vec::with_capacity(RECENT_MAX + 1),
            allocated_bytes: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes in allocated blocks.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }

    /// The capacity a block for `len` bytes gets, if that is representable.
    pub fn block_capacity(len: u64) -> Option<u64> {
        len.max(1).checked_next_multiple_of(BLOCK_ALIGN)
    }

    /// A block of at least `len` bytes held by `holders`, or `None` if no
    /// free space fits it now.
    pub fn allocate(&mut self, len: u64, holders: Holders) -> Option<u64> {
        let capacity = Self::block_capacity(len)?;
        if capacity > self.size {
            return None;
        }
        let offset = match self.take_recent(capacity) {
            Some(found) => found,
            None => match self.take_first_fit(capacity) {
                Some(found) => found,
                None if !self.recent.is_empty() => {
                    self.spill_recent(0);
                    self.take_first_fit(capacity)?
                }
                None => return None,
            },
        };
        let capacity = match self.blocks.get(&offset) {
            // `take_recent` leaves the whole recent block in place.
            Some(block) => block.capacity,
            None => capacity,
        };
        self.blocks.insert(offset, Block { capacity, holders });
        self.allocated_bytes += capacity;
        Some(offset)
    }

    /// Adds `holder` to the allocated block at `offset`, which must be the
    /// start of a block of at least `len` bytes that `holder` does not hold
    /// yet (a hold is given back once). Returns whether it was.
    pub fn hold(&mut self, offset: u64, len: u64, holder: Holders) -> bool {
        match self.blocks.get_mut(&offset) {
            Some(block) if block.capacity >= len && block.holders & holder == 0 => {
                block.holders |= holder;
                true
            }
            _ => false,
        }
    }

    /// Whether `holder` holds the block at `offset`.
    pub fn holds(&self, offset: u64, holder: Holders) -> bool {
        self.blocks
            .get(&offset)
            .is_some_and(|block| block.holders & holder != 0)
    }

    /// `holder` lets go of the block at `offset`. Returns whether that freed
    /// the block.
    pub fn release(&mut self, offset: u64, holder: Holders) -> Result<bool, ReleaseError> {
        let block = self.blocks.get_mut(&offset).ok_or(ReleaseError::NoSuchBlock(offset))?;
        if block.holders & holder == 0 {
            return Err(ReleaseError::NotHeld(offset));
        }
        block.holders &= !holder;
        if block.holders != 0 {
            return Ok(false);
        }
        let capacity = block.capacity;
        self.blocks.remove(&offset);
        self.allocated_bytes -= capacity;
        self.recent.push((offset, capacity));
        if self.recent.len() > RECENT_MAX {
            self.spill_recent(self.recent.len() - RECENT_MAX);
        }
        Ok(true)
    }

    /// `holder` lets go of every block it holds (a reader that left).
    /// Returns how many it held.
    pub fn release_all(&mut self, holder: Holders) -> usize {
        let held: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, block)| block.holders & holder != 0)
            .map(|(&offset, _)| offset)
            .collect();
        for &offset in &held {
            let _ = self.release(offset, holder);
        }
        held.len()
    }

    /// Bytes of blocks that `holders` (any of the bits) hold.
    pub fn bytes_held_by(&self, holders: Holders) -> u64 {
        self.blocks
            .values()
            .filter(|block| block.holders & holders != 0)
            .map(|block| block.capacity)
            .sum()
    }

    fn take_recent(&mut self, capacity: u64) -> Option<u64> {
        let index = self
            .recent
            .iter()
            .rposition(|&(_, have)| have >= capacity && have / 2 <= capacity)?;
        let (offset, have) = self.recent.remove(index);
        // Reused whole: recording the full capacity keeps invariant 1.
        self.blocks.insert(
            offset,
            Block {
                capacity: have,
                holders: 0,
            },
        );
        Some(offset)
    }

    fn take_first_fit(&mut self, capacity: u64) -> Option<u64> {
        let index = self.ranges.iter().position(|&(_, len)| len >= capacity)?;
        let (start, len) = self.ranges[index];
        if len == capacity {
            self.ranges.remove(index);
        } else {
            self.ranges[index] = (start + capacity, len - capacity);
        }
        Some(start)
    }

    /// Moves the oldest `count` recent blocks (all of them for 0) into the
    /// ranges.
    fn spill_recent(&mut self, count: usize) {
        let spilled: Vec<(u64, u64)> = if count == 0 {
            self.recent.drain(..).collect()
        } else {
            self.recent.drain(..count).collect()
        };
        for (offset, capacity) in spilled {
            self.insert_range(offset, capacity);
        }
    }

    fn insert_range(&mut self, start: u64, len: u64) {
        let index = self.ranges.partition_point(|&(other, _)| other < start);
        let joins_previous = index > 0 && {
            let (prev_start, prev_len) = self.ranges[index - 1];
            prev_start + prev_len == start
        };
        let joins_next = index < self.ranges.len() && start + len == self.ranges[index].0;
        match (joins_previous, joins_next) {
            (true, true) => {
                let next_len = self.ranges.remove(index).1;
                self.ranges[index - 1].1 += len + next_len;
            }
            (true, false) => self.ranges[index - 1].1 += len,
            (false, true) => {
                self.ranges[index].0 = start;
                self.ranges[index].1 += len;
            }
            (false, false) => self.ranges.insert(index, (start, len)),
        }
    }

    /// Checks invariant 1; for tests.
    #[cfg(test)]
    fn check(&self) {
        let mut spans: Vec<(u64, u64)> = self
            .blocks
            .iter()
            .map(|(&offset, block)| (offset, block.capacity))
            .chain(self.recent.iter().copied())
            .chain(self.ranges.iter().copied())
            .collect();
        spans.sort_unstable();
        let mut at = 0;
        for (start, len) in spans {
            assert_eq!(start, at, "gap or overlap at {at}");
            assert!(start.is_multiple_of(BLOCK_ALIGN) && len.is_multiple_of(BLOCK_ALIGN));
            at = start + len;
        }
        assert_eq!(at, self.size);
        for pair in self.ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 < pair[1].0, "ranges not coalesced");
        }
        assert!(self.blocks.values().all(|block| block.holders != 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 1000 * 64;

    #[test]
    fn fixed_size_frames_reuse_the_most_recently_freed_block() {
        let mut books = HeapBooks::new(64 * FRAME);
        let first = books.allocate(FRAME, WRITER).unwrap();
        let second = books.allocate(FRAME, WRITER).unwrap();
        books.release(first, WRITER).unwrap();
        books.release(second, WRITER).unwrap();
        // LIFO: the last freed comes back first, then the one before.
        assert_eq!(books.allocate(FRAME, WRITER), Some(second));
        assert_eq!(books.allocate(FRAME, WRITER), Some(first));
        books.check();

        // A stream with two frames in flight touches only three blocks of
        // a 64-frame heap, however long it runs.
        let mut books = HeapBooks::new(64 * FRAME);
        let mut touched = std::collections::BTreeSet::new();
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..10_000 {
            let block = books.allocate(FRAME, WRITER | reader(0)).unwrap();
            books.release(block, WRITER).unwrap();
            touched.insert(block);
            in_flight.push_back(block);
            if in_flight.len() > 2 {
                books.release(in_flight.pop_front().unwrap(), reader(0)).unwrap();
            }
        }
        assert_eq!(touched.len(), 3, "{touched:?}");
        books.check();
    }

    #[test]
    fn a_held_block_pins_only_itself() {
        let mut books = HeapBooks::new(8 * FRAME);
        let kept = books.allocate(FRAME, reader(0)).unwrap();
        // Everything else cycles many times around the block kept.
        for _ in 0..1000 {
            let blocks: Vec<u64> = (0..7).map(|_| books.allocate(FRAME, WRITER).unwrap()).collect();
            assert!(books.allocate(FRAME, WRITER).is_none(), "the heap holds 8 frames");
            for block in blocks.into_iter().rev() {
                books.release(block, WRITER).unwrap();
            }
        }
        assert!(books.holds(kept, reader(0)));
        books.check();
    }

    #[test]
    fn a_block_is_freed_when_its_last_holder_lets_go_in_any_order() {
        let mut books = HeapBooks::new(4 * FRAME);
        let block = books.allocate(FRAME, WRITER).unwrap();
        assert!(books.hold(block, FRAME, reader(0)));
        assert!(books.hold(block, FRAME, reader(3)));
        assert_eq!(books.release(block, reader(3)), Ok(false));
        assert_eq!(books.release(block, WRITER), Ok(false));
        assert_eq!(books.allocated_bytes(), FRAME);
        assert_eq!(books.release(block, reader(0)), Ok(true));
        assert_eq!(books.allocated_bytes(), 0);
        books.check();
    }

    #[test]
    fn bad_releases_change_nothing() {
        let mut books = HeapBooks::new(4 * FRAME);
        let block = books.allocate(FRAME, WRITER | reader(0)).unwrap();
        assert_eq!(books.release(block, reader(1)), Err(ReleaseError::NotHeld(block)));
        assert_eq!(
            books.release(block + 64, reader(0)),
            Err(ReleaseError::NoSuchBlock(block + 64))
        );
        assert_eq!(
            books.release(u64::MAX, reader(0)),
            Err(ReleaseError::NoSuchBlock(u64::MAX))
        );
        assert_eq!(books.release(block, reader(0)), Ok(false));
        assert_eq!(books.release(block, reader(0)), Err(ReleaseError::NotHeld(block)));
        assert!(books.holds(block, WRITER));
        // Holding needs a block that exists, is large enough, and is not
        // held by that holder already.
        assert!(!books.hold(block, FRAME, WRITER));
        assert!(!books.hold(block, FRAME + 1, reader(0)));
        assert!(!books.hold(block + 64, 1, reader(0)));
        books.check();
    }

    #[test]
    fn a_reader_that_leaves_returns_everything_it_held() {
        let mut books = HeapBooks::new(8 * FRAME);
        let blocks: Vec<u64> = (0..6).map(|_| books.allocate(FRAME, reader(2)).unwrap()).collect();
        books.hold(blocks[0], FRAME, WRITER);
        assert_eq!(books.release_all(reader(2)), 6);
        assert_eq!(books.allocated_bytes(), FRAME);
        assert_eq!(books.bytes_held_by(reader(2)), 0);
        books.check();
    }

    #[test]
    fn variable_sizes_coalesce_and_never_lose_space() {
        let mut books = HeapBooks::new(1 << 20);
        let mut live: Vec<u64> = Vec::new();
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        for _ in 0..20_000 {
            if live.len() > 20 || (next() % 3 == 0 && !live.is_empty()) {
                let index = next() as usize % live.len();
                books.release(live.swap_remove(index), WRITER).unwrap();
            } else if let Some(block) = books.allocate(1 + next() % 60_000, WRITER) {
                live.push(block);
            }
            books.check();
        }
        for block in live {
            books.release(block, WRITER).unwrap();
        }
        // Everything coalesces back into one range once the stack spills.
        assert!(books.allocate(1 << 20, WRITER).is_some());
        books.check();
    }

    #[test]
    fn sizes_that_never_fit_are_refused() {
        let mut books = HeapBooks::new(4 * FRAME);
        assert!(books.allocate(4 * FRAME + 1, WRITER).is_none());
        assert!(books.allocate(u64::MAX - 10, WRITER).is_none());
        assert!(books.allocate(4 * FRAME, WRITER).is_some());
        books.check();
    }
}

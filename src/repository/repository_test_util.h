// Test helper: a forged chunk object — sealed correctly under `id` but holding other bytes than
// the id names (what a writer's bug would leave), in the repository's own object format (a
// version-1 blob, or a segmented chunk's data blob, table blob and footer).
#pragma once

#include <span>
#include <vector>

#include "repository/chunk_table.h"
#include "repository/repository.h"
#include "repository/repository_format.h"

namespace blksnap::repo {

inline Status PutForgedChunk(Repository& repo, const Digest& id, std::span<const uint8_t> bytes) {
  BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> object, repo.codec().Seal(bytes, id.bytes));
  if (repo.codec().segmented()) {
    ChunkTable table;
    table.length = bytes.size();
    table.segment_size = repo.codec().config().segment_size;
    table.digests = SegmentDigests(bytes, table.segment_size);
    table.present.assign(table.digests.size(), 1);
    BLKSNAP_ASSIGN_OR_RETURN(std::vector<uint8_t> table_blob,
                             repo.codec().Seal(EncodeChunkTable(table), ChunkTableAad(id)));
    object.insert(object.end(), table_blob.begin(), table_blob.end());
    uint8_t footer[kChunkFooterSize];
    PutChunkFooter(std::span<uint8_t, 8>(footer, 8), static_cast<uint32_t>(table_blob.size()));
    object.insert(object.end(), footer, footer + kChunkFooterSize);
  }
  return repo.store().Put(Codec::ChunkName(id), object);
}

}  // namespace blksnap::repo

import CUblk
import Testing

@Suite struct UapiLayoutTests {
    @Test func structSizesMatchThe612ABI() {
        #expect(MemoryLayout<ublksrv_ctrl_cmd>.size == 32)
        #expect(MemoryLayout<ublksrv_ctrl_dev_info>.size == 64)
        #expect(MemoryLayout<ublksrv_io_desc>.size == 24)
        #expect(MemoryLayout<ublksrv_io_cmd>.size == 16)
        #expect(MemoryLayout<ublk_params>.size == 112)
        #expect(MemoryLayout<ublk_param_basic>.size == 32)
        #expect(MemoryLayout<ublk_param_discard>.size == 20)
    }

    @Test func ioctlEncodedOpcodes() {
        // _IOWR('u', nr, 32-byte struct) = 0xC0000000 | 32 << 16 | 'u' << 8 | nr
        func iowr(_ nr: UInt32, size: UInt32) -> UInt32 { 0xC000_0000 | size << 16 | 0x75 << 8 | nr }
        func ior(_ nr: UInt32, size: UInt32) -> UInt32 { 0x8000_0000 | size << 16 | 0x75 << 8 | nr }
        #expect(UBLK_U_CMD_ADD_DEV == iowr(0x04, size: 32))
        #expect(UBLK_U_CMD_GET_FEATURES == ior(0x13, size: 32))
        #expect(UBLK_U_CMD_DEL_DEV_ASYNC == ior(0x14, size: 32))
        #expect(UBLK_U_IO_FETCH_REQ == iowr(0x20, size: 16))
        #expect(UBLK_U_IO_COMMIT_AND_FETCH_REQ == iowr(0x21, size: 16))
    }
}

//! DSA setup against the model, and the model's command error codes.

use super::regs::*;
use super::*;
use crate::DmaError;
use crate::hw::mmio::Mmio;
use crate::model::{DsaModel, DsaModelConfig};

fn no_violations(model: &DsaModel) {
    let v = model.violations();
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn setup_enables_one_dedicated_wq_and_drop_disables_it() {
    let model = DsaModel::new(DsaModelConfig::default());
    let dev = DsaDevice::setup(model.clone()).unwrap();
    let caps = *dev.caps();
    assert_eq!(
        (caps.groups, caps.engines, caps.wqs, caps.total_wq_size),
        (4, 4, 8, 128)
    );
    assert_eq!((caps.max_xfer_shift, caps.max_batch_shift), (31, 10));
    assert!(caps.dedicated && caps.shared);
    assert_eq!(caps.wqcfg_bytes, 32);
    assert!(model.enabled() && model.wq_enabled(0) && dev.wq_enabled());
    assert!((1..8).all(|w| !model.wq_enabled(w)));
    assert_eq!(model.read64(caps.grpcfg_reg(0, GRPCFG_ENGINES)), 1);
    assert_eq!(model.read64(caps.grpcfg_reg(0, GRPCFG_WQS)), 1);
    assert_eq!(model.read32(caps.wqcfg_word(0, WQCFG_SIZE_WORD)), 128);
    drop(dev);
    assert!(!model.enabled() && !model.wq_enabled(0));
    no_violations(&model);
}

#[test]
fn setup_is_refused_without_dedicated_wqs() {
    let model = DsaModel::new(DsaModelConfig {
        dedicated_mode: false,
        ..Default::default()
    });
    assert!(matches!(
        DsaDevice::setup(model.clone()),
        Err(DmaError::Device(_))
    ));
    assert!(!model.enabled());
    no_violations(&model);
}

/// Runs `cmd` on the model and returns its error code.
fn code(model: &DsaModel, cmd: u32, operand: u32) -> u8 {
    match command(model, cmd, operand) {
        Ok(()) => 0,
        Err(DmaError::DeviceCommand { cmd: c, code }) => {
            assert_eq!(c, cmd);
            code
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn model_command_error_codes() {
    let model = DsaModel::new(DsaModelConfig {
        max_xfer_shift: 20,
        max_batch_shift: 5,
        shared_mode: false,
        ..Default::default()
    });
    let caps = DsaCaps::read(&model);
    let wq = |w: u8, word: usize| caps.wqcfg_word(w, word);
    let grp = |g: u8, reg: usize| caps.grpcfg_reg(g, reg);
    let good_mode = 1 << WQ_PRIORITY_SHIFT | WQ_MODE_DEDICATED;
    assert_eq!(code(&model, 0x1f, 0), err::INVAL_CMD);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::DEV_NOTEN);
    assert_eq!(code(&model, cmd::DISABLE_DEV, 0), err::DIS_DEV_EN);
    assert_eq!(code(&model, cmd::DISABLE_WQ, 1), err::DEV_NOT_EN);
    // Sizes beyond the total.
    model.write32(wq(0, WQCFG_SIZE_WORD), 100);
    model.write32(wq(1, WQCFG_SIZE_WORD), 29);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::WQ_SIZE_ERANGE);
    // A sized WQ in no group; then in a group without engine; then an engine in two groups.
    model.write32(wq(1, WQCFG_SIZE_WORD), 0);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::GRP_CONFIG);
    model.write64(grp(0, GRPCFG_WQS), 1);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::GRP_CONFIG);
    model.write64(grp(0, GRPCFG_ENGINES), 1);
    model.write64(grp(1, GRPCFG_ENGINES), 1);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::GRP_CONFIG);
    model.write64(grp(1, GRPCFG_ENGINES), 1 << 9);
    assert_eq!(
        code(&model, cmd::ENABLE_DEV, 0),
        err::GRP_CONFIG,
        "beyond ENGCAP"
    );
    model.write64(grp(1, GRPCFG_ENGINES), 0);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), 0);
    assert_eq!(code(&model, cmd::ENABLE_DEV, 0), err::DEV_ENABLED);
    // ENABLE_WQ's checks, one at a time.
    assert_eq!(code(&model, cmd::ENABLE_WQ, 8), err::INVAL_WQIDX);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 1), err::WQ_SIZE);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::WQ_PRIOR);
    model.write32(wq(0, WQCFG_MODE_WORD), 1 << WQ_PRIORITY_SHIFT);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::WQ_MODE, "shared");
    model.write32(wq(0, WQCFG_MODE_WORD), good_mode);
    model.write32(wq(0, WQCFG_SIZES_WORD), 21);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::MAX_XFER_SIZE);
    model.write32(wq(0, WQCFG_SIZES_WORD), 20 | 6 << WQ_BATCH_SHIFT);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::MAX_BATCH_SIZE);
    model.write32(wq(0, WQCFG_SIZES_WORD), 20 | 5 << WQ_BATCH_SHIFT);
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), 0);
    assert!(model.wq_enabled(0));
    assert_eq!(code(&model, cmd::ENABLE_WQ, 0), err::WQ_ENABLED);
    assert_eq!(
        model.read32(wq(0, WQCFG_STATE_WORD)) >> WQ_STATE_SHIFT,
        WQ_STATE_ENABLED
    );
    no_violations(&model);
    // Writes silicon ignores: configuration of an enabled device or WQ, the state word,
    // read-only registers, wrong widths, unmodelled offsets.
    model.write64(grp(0, GRPCFG_ENGINES), 3);
    model.write32(wq(0, WQCFG_SIZE_WORD), 1);
    model.write32(wq(1, WQCFG_STATE_WORD), 1);
    model.write64(GENCAP, 0);
    model.write64(CMD, 0);
    assert_eq!(model.read32(0x3000), u32::MAX);
    assert_eq!(model.violations().len(), 6, "{:#?}", model.violations());
    assert_eq!(model.read64(grp(0, GRPCFG_ENGINES)), 1, "ignored");
    assert_eq!(code(&model, cmd::DISABLE_WQ, 1 << 9), err::INVAL_WQIDX);
    assert_eq!(code(&model, cmd::DISABLE_WQ, 1), 0);
    assert!(!model.wq_enabled(0));
    assert_eq!(code(&model, cmd::DISABLE_DEV, 0), 0);
    assert_eq!(code(&model, cmd::RESET_DEVICE, 0), 0);
    assert_eq!(
        model.read64(grp(0, GRPCFG_WQS)),
        0,
        "a reset zeroes the tables"
    );
}
